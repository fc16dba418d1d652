//! The key-value gateway's timestamps on a replicated coordinator: strictly serializable across
//! a change of leader.
//!
//! A transaction that begins after another was acknowledged as committed must read above the
//! other's commit timestamp, whichever replica issued either. One gateway's hybrid logical
//! clock guarantees it alone; across leaders the new one's clock may be behind (another
//! machine's clock, or the old one pushed ahead by the shards' clocks it observed).
//!
//! The choice: **persist an upper bound of issued timestamps in the replicated log**, not wait
//! out the clock offset. The leader issues a timestamp only below a bound the log has
//! committed (`concord_replication::records`' timestamp bound), raising it by a window at a
//! time; a new leader has applied the whole log before its core starts, and raises its clock
//! above the bound it finds before it issues anything. So the rule holds without trusting the
//! clocks, a deposed leader cannot issue past a bound it could no longer commit, and failover
//! costs no wait. Waiting out the offset instead would add twice the maximum offset (1 s by
//! default) to every failover and hold only while the clocks are as close as configured.
//!
//! The window is a quarter of the maximum offset: a new leader's first timestamps run at most
//! that far ahead of its own clock (until its clock catches up), which leaves three quarters
//! of the offset the shards accept for real clock skew (they refuse what is more than the
//! maximum offset ahead of theirs). It costs one log commit per window while transactions run:
//! four a second at the default 500 ms offset.

use std::sync::{Arc, Mutex};

use concord_kv::{Hlc, Timestamp};
use tonic::Status;

use crate::kv::physical_now_us;
use crate::replicated::Replication;

/// How long a raise may wait for its bound to commit before the caller is told to retry
/// (the longest election timeout is 10 s; a leader still in charge commits in milliseconds).
const RAISE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Times a timestamp is asked for while the bound is being raised before the caller is told
/// to retry (another raise can be needed only if the clock jumped past the new bound at once).
const ATTEMPTS: usize = 3;

#[derive(Debug)]
pub(crate) struct TimestampLease {
    replication: Arc<Replication>,
    window_us: u64,
    /// The bound this replica's log has committed in its current leadership (0: none yet),
    /// and the stand-down count it was committed under: a bound granted before a stand-down
    /// does not carry into the next leadership, which must read the log's bound first.
    granted: Mutex<(u64, u64)>,
    /// One raise at a time.
    raising: tokio::sync::Mutex<()>,
}

impl TimestampLease {
    pub(crate) fn new(replication: Arc<Replication>, max_offset_us: u64) -> Self {
        TimestampLease {
            replication,
            window_us: (max_offset_us / 4).max(1_000),
            granted: Mutex::new((0, 0)),
            raising: tokio::sync::Mutex::new(()),
        }
    }

    fn granted_now(&self) -> u64 {
        let generation = *self.replication.stand_downs.borrow();
        let (bound, granted_in) = *self.granted.lock().expect("not poisoned");
        if granted_in == generation {
            bound
        } else {
            0
        }
    }

    /// A timestamp from `clock`, below a bound the replicated log has committed.
    pub(crate) async fn issue(&self, clock: &Mutex<Hlc>) -> Result<Timestamp, Status> {
        for _ in 0..ATTEMPTS {
            let granted = self.granted_now();
            let ts = clock.lock().expect("clock lock").now(physical_now_us());
            if ts.wall < granted {
                return Ok(ts);
            }
            self.raise(clock, ts.wall).await?;
        }
        Err(Status::unavailable("the gateway's timestamp bound could not keep up: retry"))
    }

    /// Raises the bound past `needed` (a timestamp's wall the bound did not cover), to a
    /// window past the clock. On the first raise of a leadership, the clock first moves past
    /// the bound the log holds: every timestamp an earlier leader issued is below it. Only
    /// then — moving the clock to this leadership's own bound at each raise would push it a
    /// window ahead every time, and callers queued behind a raise ran it away (`concord bench
    /// kv --coordinators 3` found the clock 7 minutes ahead, and every shard refusing it).
    async fn raise(&self, clock: &Mutex<Hlc>, needed: u64) -> Result<(), Status> {
        let _one = self.raising.lock().await;
        if self.granted_now() > needed {
            return Ok(()); // raised meanwhile by the caller ahead in the queue
        }
        let generation = *self.replication.stand_downs.borrow();
        let taken_over = {
            let (bound, granted_in) = *self.granted.lock().expect("not poisoned");
            bound > 0 && granted_in == generation
        };
        let floor = {
            let mut clock = clock.lock().expect("clock lock");
            if !taken_over {
                let machine = self.replication.replica.machine();
                let logged = machine.lock().expect("not poisoned").timestamp_bound();
                clock.witness(Timestamp::new(logged, 0));
            }
            clock.last().wall.max(physical_now_us()).max(needed)
        };
        // Saturating: a bound in the log is only as trustworthy as whoever could write it.
        let want = floor.saturating_add(self.window_us);
        let (done, committed) = tokio::sync::oneshot::channel();
        let callback: concord_replication::OnCommitted = Box::new(move |result| {
            let _ = done.send(result.is_ok());
        });
        let command = concord_replication::records::timestamp_bound_command(want);
        self.replication.submitter.submit(command, Some(callback));
        // Bounded: a leader cut off from its majority may neither commit nor hear why.
        let committed = tokio::time::timeout(RAISE_TIMEOUT, committed).await;
        if !matches!(committed, Ok(Ok(true))) {
            return Err(Status::unavailable(
                "this coordinator replica could not commit its timestamp bound (it is losing \
                 its leadership): retry",
            ));
        }
        *self.granted.lock().expect("not poisoned") = (want, generation);
        Ok(())
    }
}
