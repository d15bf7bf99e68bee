//! kiln: a durable job queue for running untrusted code, backed by one SQLite file.
//!
//! # Life of a job
//!
//! The modules, in the order a job passes through them:
//!
//! 1. [`http`] accepts the connection under its limits; [`api`] — `POST /v1/jobs` decodes the
//!    request and validates it into a [`job::JobSpec`] against the deployment's
//!    [`config::Policy`].
//! 2. [`store`] — the single writer commits the job and its `job.queued` event in one
//!    transaction, shared with whatever else is pending (group commit); only then does the API
//!    answer `202 Accepted`.
//! 3. [`bus`] — after the commit, idle workers are woken (no polling delay).
//! 4. [`worker`] — a worker claims the job (`queued → running`, attempt + 1, a lease) in one
//!    short statement and keeps renewing the lease while the job runs.
//! 5. [`runner`] — runs the code for the job's [`runtime`] in a fresh work directory under
//!    limits, captures capped output, and kills the whole process group at the end.
//! 6. [`store`] again — the result and the terminal event are written, only if the job is still
//!    running under the same attempt.
//! 7. [`api`] — pollers read it back (`GET /v1/jobs/{id}?wait=`, woken by the bus), or follow
//!    the event feed, also live over Server-Sent Events: [`live`] fans each commit out to every
//!    stream once, and carries a running job's output to its watchers; [`progress`] is how a
//!    job reports how far it got while it runs.
//! 8. [`webhook`] — if the job (or, for its last case, its [`batch`]) named a `callback_url`,
//!    the terminal transaction also wrote an outbox row; the deliverer, woken by the bus, POSTs
//!    the signed result and retries until it is answered with a 2xx or the retry horizon passes.
//!
//! Before any of it, [`auth`] says on whose behalf a request acts: with API tokens, each
//! tenant sees only its own jobs, batches and events.
//!
//! [`server`] wires these together and shuts them down in order; [`client`] is the command-line
//! client of a running server.

pub mod api;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod job;
pub mod live;
pub mod metrics;
pub mod ops;
pub mod progress;
pub mod runner;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
#[cfg(test)]
mod testing;
pub mod webhook;
pub mod worker;
