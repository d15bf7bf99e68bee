//! kiln: a durable job queue for running untrusted code, backed by one SQLite file.
//!
//! # Life of a job
//!
//! At the bottom sits [`job`], the domain: ids, states, outcomes, limits, events, suites
//! ([`job::batch`]), verdicts ([`job::verdict`]), what a deployment allows
//! ([`job::policy::Policy`]) and the validation of a request against it. It imports nothing of
//! kiln above it; everything below names it. The modules above it, in the order a job passes
//! through them:
//!
//! 1. [`http`] accepts the connection under its limits; [`api`] — `POST /v1/jobs` decodes the
//!    request and validates it into a [`job::JobSpec`] against the deployment's policy (a suite
//!    sent as NDJSON is checked a line at a time and spooled to disk until its last line).
//! 2. [`store`] — the single writer admits the job against the queue's limits and commits it
//!    with its `job.queued` event in one transaction, shared with whatever else is pending (group
//!    commit); only then does the API answer `202 Accepted`.
//! 3. [`bus`] — after the commit, idle workers are woken (no polling delay).
//! 4. [`worker`] — a worker claims the job (`queued → running`, attempt + 1, a lease) in one
//!    short statement, usually in the same write that finished its previous job, and keeps
//!    renewing the lease while the job runs. Each attempt runs in a task of its own, so a panic
//!    ends that job `error` and the worker goes on.
//! 5. [`runner`] — runs the code for the job's [`runtime`] (a compiled one's build first, shared
//!    by a suite's cases) under its limits, feeds its stdin (for an interactive job, also what
//!    is written to it while it runs: [`stdin`]), captures capped output, and measures it.
//! 6. [`sandbox`] — where the runner starts it: new namespaces, a read-only root with the
//!    submitted files written into `/work` from memory, seccomp, Landlock, a cgroup of its own.
//!    The run ends by killing the sandbox's init, which takes every process of the job with it.
//!    (`--sandbox none`, for development, runs a plain subprocess and kills its process group.)
//! 7. [`store`] again — the result (its output as the exact bytes, [`job::content`], and the
//!    files its `outputs` named, read from `/work` after the run, [`job::outputs`]) and the
//!    terminal event are written, only if the job is still running under the same attempt; a suite's case is first judged against its expected output
//!    ([`job::verdict`]), and the same transaction settles its suite.
//! 8. [`api`] — pollers read it back (`GET /v1/jobs/{id}?wait=`, woken by the bus), or follow
//!    the event feed, also live over Server-Sent Events: [`live`] fans each commit out to every
//!    stream once, and carries a running job's output to its watchers; [`progress`] is how a
//!    job reports how far it got while it runs.
//! 9. [`webhook`] — if the job (or, for its last case, its suite) named a `callback_url`, the
//!    terminal transaction also wrote an outbox row; the deliverer, woken by the bus, POSTs the
//!    signed result and retries until it is answered with a 2xx or the retry horizon passes.
//!
//! When a worker dies instead (its server killed, its lease not renewed), the rescuer in
//! [`worker`] takes the job back once the lease has run out: queued again for another attempt,
//! or ended `error` when it has none left.
//!
//! Before any of it, [`auth`] says on whose behalf a request acts: with API tokens, each
//! tenant sees only its own jobs, batches and events.
//!
//! All of it runs on one SQLite file. [`store::postgres`] is the store on PostgreSQL, for many
//! nodes on one database: in progress, it does the core of a job's life but is not yet one
//! `kiln serve` can run on (`docs/deployment.md`).
//!
//! [`config`] holds everything a deployment can tune and [`server`] wires the parts together and
//! shuts them down in order, warning at start of another server on the host that shares its
//! work root or sandbox uids ([`neighbours`]). The `kiln` binary's commands are [`cli`] (the
//! flags they share, and `kiln serve`'s config file), [`client`] (a client of a running server)
//! and [`ops`] (the operator's commands on the database and the host); [`metrics`] counts for
//! `GET /metrics`.

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
pub mod neighbours;
pub mod ops;
pub mod progress;
pub mod runner;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod stdin;
pub mod store;
#[cfg(test)]
mod testing;
pub mod webhook;
pub mod worker;
