import re,sys,collections
# Attributes each sample to the innermost frame that names a component.
rules=[('fdatasync (kernel)','fdatasync|ext4_sync|jbd2'),('kernel: network, epoll, scheduling','^[a-z_]*(tcp_|epoll|sock|skb|__sys_|do_syscall|schedule|softirq|irq|futex|ip_|__x64|net_|loopback)'),
('malloc/free','malloc|^_int_|free|realloc|tcache|unlink_chunk|consolidate'),('memcpy/memcmp','memcpy|memmove|memcmp|memset'),
('protobuf (prost)','prost::|::encode_raw|::merge_field|encoded_len'),('gRPC/HTTP2 (h2, hyper, tonic, tower, http)','^(h2|hyper|tonic|tower|http|http_body|http_body_util|hyper_util)::|<(h2|hyper|tonic|tower|http|http_body|http_body_util|hyper_util)::'),
('KV shard, MVCC (concord_kv)','concord_kv::'),('protocol cores (concord_commit)','concord_commit::'),('log (concord_wal)','concord_wal::'),('client (concord_client)','concord_client::'),('node: loop, engine, services (concord_node)','concord_node::'),
('tokio runtime','tokio::'),('std/other','.')]
tot=0;c=collections.Counter()
for line in open(sys.argv[1]):
    stack,n=line.rsplit(' ',1);n=int(n);tot+=n
    for f in reversed(stack.split(';')):
        hit=next((name for name,p in rules[:-1] if re.search(p,f)),None)
        if hit: c[hit]+=n;break
    else: c['std/other']+=n
for k,v in c.most_common(): print(f'| {k} | {100*v/tot:.1f}% |')
