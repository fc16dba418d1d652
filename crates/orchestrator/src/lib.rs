//! The saga orchestrator as a service: the [`concord_saga::Orchestrator`] core on a durable
//! Concord log (group commit, checkpoints), calling steps over HTTP, with a JSON API.
//!
//! ```text
//!  POST /v1/sagas  {definition, payload} ─► core ─► Persist ─► group commit ─► Persisted ─┐
//!  GET  /v1/sagas[?running]                  ▲                                            │
//!  GET  /v1/sagas/ID   (timeline)            └── Reply ◄── HTTP POST endpoint ◄── Call ◄──┘
//!                                                          Idempotency-Key: {saga}:{step}:{phase}
//! ```
//!
//! A step's answer: 2xx ⇒ success; 409 or 422 ⇒ business failure (the step did not apply; the
//! saga compensates); anything else, or no answer within the step's timeout ⇒ retry.
//! A start is acknowledged once its `Started` record is durable: from then on the saga finishes
//! even if this process is killed (it resumes from the log at the next start).

mod api;
mod driver;
mod pg_store;
mod timeline;

pub use api::{StartRequest, StepRequest};
pub use driver::{serve, Options, PostgresOptions, StepHosts};

/// Checks a listing's query (`/v1/sagas?…`) as the API does: for the fuzz targets.
#[doc(hidden)]
pub fn check_listing(target: &str, now_us: u64) -> Result<(), String> {
    api::Listing::parse(target, now_us).map(|_| ())
}
