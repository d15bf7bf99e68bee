//! kiln's integration tests: every one drives the real `kiln` binary (a real SQLite file, real
//! subprocesses, HTTP on a loopback port), as a user or operator would.

mod api;
mod attacks;
mod auth;
mod backpressure;
mod batch_streams;
mod batches;
mod cli;
mod crash;
mod docs;
mod durability;
mod faults;
mod hostile;
mod levels;
mod ops;
mod runs;
mod schema;
mod streams;
mod util;
mod webhooks;
