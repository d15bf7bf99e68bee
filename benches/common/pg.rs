//! A throwaway PostgreSQL cluster for the benchmarks that measure kiln on PostgreSQL: the
//! tests' `tests/support/pg_cluster.rs`, made on the target directory's disk, with a fresh
//! database per measurement.
//!
//! Unlike the tests' cluster, a bench owns its cluster alone, must fail when PostgreSQL is
//! missing rather than report nothing, keeps fsync on, so that a durable commit costs here what
//! it costs in a deployment, and stops the server should the bench be killed before it can.

// Each bench target compiles this module on its own and uses a part of it.
#![allow(dead_code)]

#[path = "../../tests/support/pg_cluster.rs"]
mod cluster;

use std::path::Path;

pub use cluster::Cluster;
use cluster::{Setup, postgres_bin};

/// Enough for three worker nodes' pools, two API nodes' and the bench's own connections.
const MAX_CONNECTIONS: u32 = 400;

/// Makes and starts the bench's cluster, and waits until it takes connections.
pub async fn start() -> Cluster {
    let bin = postgres_bin().expect(
        "PostgreSQL is not installed: the cluster bench needs its server \
         (apt-get install postgresql)",
    );
    let max_connections = format!("max_connections={MAX_CONNECTIONS}");
    let setup = Setup {
        parent: Some(Path::new(env!("CARGO_TARGET_TMPDIR"))),
        settings: &[&max_connections],
        dies_with_starter: true,
        ..Setup::default()
    };
    Cluster::start(&bin, &setup).await
}

/// Creates an empty database `name` on `cluster` and returns its URL.
pub async fn create_database(cluster: &Cluster, name: &str) -> String {
    connect(&cluster.url("postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    cluster.url(name)
}

/// Drops database `name` on `cluster`, closing what is still connected to it.
pub async fn drop_database(cluster: &Cluster, name: &str) {
    connect(&cluster.url("postgres"))
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap_or_else(|e| panic!("drop database {name}: {e}"));
}

/// Connects to `url`, driving the connection on the calling runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    // A broken connection fails the next query made on it, which says so; one cut by the drop
    // of its database after a measurement is expected.
    tokio::spawn(connection);
    client
}
