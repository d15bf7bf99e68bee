//! A PostgreSQL server for the tests, started by the tests themselves: a throwaway cluster in a
//! temporary directory, listening on a free loopback port, with a fresh database for each test.
//! The cluster is shared by the tests running at the same time and stopped when the last of them
//! lets go of it. `KILN_TEST_DB=postgres://user@host:port/db` uses that server instead (each test
//! still gets a database of its own, dropped afterwards).
//!
//! The cluster itself is `tests/support/pg_cluster.rs`'s, which the benchmarks share. A host
//! without PostgreSQL skips, which `KILN_TEST_STRICT=1` turns into a failure.
//!
//! A test that needs a server configured otherwise (`postgres_tls`: TLS only) starts an
//! [`OwnCluster`] from a [`Setup`]; the shared cluster is started from the default one.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use crate::util::skip;

#[path = "../support/pg_cluster.rs"]
mod cluster;

use cluster::Cluster;
pub use cluster::{Setup, postgres_bin};

/// The cluster the running tests share, if one is up.
static CLUSTER: tokio::sync::Mutex<Weak<Cluster>> = tokio::sync::Mutex::const_new(Weak::new());

/// Numbers the databases this test process creates.
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// A database of one test's own, on the tests' cluster or on `KILN_TEST_DB`'s server.
pub struct TestDb {
    /// Where kiln connects: `postgres://…/kiln_test_…`.
    pub url: String,
    name: String,
    /// The server's own database, from which this one is created and dropped.
    admin_url: String,
    /// Holds the cluster up while the test runs; `None` on `KILN_TEST_DB`'s server.
    cluster: Option<Arc<Cluster>>,
}

impl TestDb {
    /// A fresh, empty database for `test`; `None` (after saying why, or failing under
    /// `KILN_TEST_STRICT=1`) when the host has no PostgreSQL.
    pub async fn create(test: &str) -> Option<TestDb> {
        let (admin_url, cluster) = match std::env::var("KILN_TEST_DB") {
            Ok(url) => (url, None),
            Err(_) => {
                let cluster = shared_cluster(test).await?;
                (cluster.url("postgres"), Some(cluster))
            }
        };
        let name = format!(
            "kiln_test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name} on {admin_url}: {e}"));
        Some(TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
            cluster,
        })
    }

    /// A plain connection to this test's database, as an operator's `psql` would have.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    /// Drops the database on a server the tests do not own; a cluster of their own goes
    /// whole, with its directory, when its last user lets go of it.
    fn drop(&mut self) {
        if self.cluster.is_some() {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own does the dropping.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                connect(&admin_url)
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Connects to `url`, driving the connection on the calling runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("test database connection ended: {e}");
        }
    });
    client
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("KILN_TEST_DB {url:?}: {e}"));
    parsed.set_path(name);
    parsed.to_string()
}

async fn shared_cluster(test: &str) -> Option<Arc<Cluster>> {
    let mut shared = CLUSTER.lock().await;
    if let Some(cluster) = shared.upgrade() {
        return Some(cluster);
    }
    let Some(bin) = postgres_bin() else {
        skip(
            test,
            "PostgreSQL is not installed (apt-get install postgresql), and KILN_TEST_DB is not set",
        );
        return None;
    };
    let cluster = Arc::new(start_cluster(&bin, &Setup::default()).await);
    *shared = Arc::downgrade(&cluster);
    Some(cluster)
}

/// A cluster of one test's (or one module's) own, stopped when dropped.
pub struct OwnCluster {
    cluster: Cluster,
}

impl OwnCluster {
    /// Starts a cluster as `setup` says; `None` (after saying why, or failing under
    /// `KILN_TEST_STRICT=1`) when the host has no PostgreSQL. `KILN_TEST_DB` does not stand in
    /// for it: that server is not configured as the test needs.
    pub async fn start(test: &str, setup: &Setup<'_>) -> Option<OwnCluster> {
        let Some(bin) = postgres_bin() else {
            skip(
                test,
                "PostgreSQL is not installed (apt-get install postgresql)",
            );
            return None;
        };
        Some(OwnCluster {
            cluster: start_cluster(&bin, setup).await,
        })
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.cluster.port()
    }

    /// Creates the database `name`, connecting over the Unix socket, whatever TCP demands.
    pub async fn create_database(&self, name: &str) {
        let client = self.local_client("postgres").await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    }

    /// A connection over the Unix socket to `database`, as the cluster's superuser.
    pub async fn local_client(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = self
            .cluster
            .local(database)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the cluster's socket: {e}"));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("test database connection ended: {e}");
            }
        });
        client
    }
}

/// A cluster as `setup` says, for tests: shared by the tests running at once, so it outlives the
/// thread that started it, and without flushes.
async fn start_cluster(bin: &Path, setup: &Setup<'_>) -> Cluster {
    // Throwaway data: what a crash would lose does not matter, and tests go faster without
    // flushing. kiln's own connections still ask for synchronous commits.
    let mut settings = vec!["fsync=off", "full_page_writes=off"];
    settings.extend_from_slice(setup.settings);
    let setup = Setup {
        settings: &settings,
        dies_with_starter: false,
        ..*setup
    };
    Cluster::start(bin, &setup).await
}
