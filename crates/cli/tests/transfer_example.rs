//! `examples/transfer/run.sh` as a test: the seed's PostgreSQL-debit / Redis-credit transfer
//! through `concord db serve`, with the coordinator killed (kill -9) after its COMMIT decision
//! and after a prepare; the script checks both stores after every step and fails if they
//! disagree with Concord's answers. Needs PostgreSQL and `redis-server`
//! (`scripts/setup-databases.sh`, `scripts/setup-redis.sh`); skips loudly without them, except
//! under `CI=true`.

use std::path::Path;
use std::process::Command;

use concord_testkit::{servers_ready, Server};

fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_seed_transfer_survives_a_coordinator_killed_between_prepare_and_commit() {
    if !servers_ready(&[Server::Databases, Server::Redis], "the transfer example") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/transfer/run.sh");
    let work = std::env::temp_dir().join(format!("concord-transfer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .env("CONCORD", env!("CARGO_BIN_EXE_concord"))
        .env("WORK", &work)
        .env("REDIS_PORT", spare_port().to_string())
        .env("API_PORT", spare_port().to_string())
        .output()
        .expect("running examples/transfer/run.sh");
    let shown = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the transfer example failed:\n{shown}");
    for step in ["ok: postgres: 70  redis: 30", "ok: postgres: 50  redis: 50", "all checks held"] {
        assert!(shown.contains(step), "missing `{step}`:\n{shown}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
