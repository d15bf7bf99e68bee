//! kiln's integration tests: all but three drive the real `kiln` binary (a real SQLite file, real
//! subprocesses, HTTP on a loopback port), as a user or operator would. The exceptions:
//! `architecture` reads the source and holds the module graph to its layering, and `postgres`
//! and `postgres_ops` and `postgres_suites` drive the PostgreSQL store directly against a real
//! server (`pg`), each step beside SQLite's; `cluster` runs `kiln serve` nodes on it,
//! `migrate_to` copies a SQLite server's history into it with `kiln migrate-to`, and
//! `postgres_tls` connects `kiln serve` to a server of its own that takes only TLS.

mod api;
mod architecture;
mod attacks;
mod auth;
mod backpressure;
mod batch_streams;
mod batches;
mod bytes;
mod cli;
mod cluster;
mod crash;
mod dashboard;
mod db;
mod docs;
mod durability;
mod examples;
mod faults;
mod hostile;
mod interactive;
mod judge0;
mod languages;
mod levels;
mod migrate_to;
mod ndjson;
mod openapi;
mod ops;
mod outputs;
mod pg;
mod piston;
mod postgres;
mod postgres_ops;
mod postgres_suites;
mod postgres_tls;
mod programs;
mod python_client;
mod runs;
mod schema;
mod stats;
mod streams;
mod unprivileged;
mod util;
mod verdicts;
mod webhooks;
