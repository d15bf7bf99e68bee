//! A PostgreSQL server for the tests, started by the tests themselves: a throwaway cluster in a
//! temporary directory, listening on a free loopback port, with a fresh database for each test.
//! The cluster is shared by the tests running at the same time and stopped when the last of them
//! lets go of it. `KILN_TEST_DB=postgres://user@host:port/db` uses that server instead (each test
//! still gets a database of its own, dropped afterwards).
//!
//! PostgreSQL refuses to run as root, and the tests run as root, so the cluster belongs to the
//! `postgres` user that Debian's package creates: `setpriv` (util-linux) runs `initdb` and the
//! server as that user, and execs them, so the child process the test holds is the server itself.
//! A host without PostgreSQL skips, which `KILN_TEST_STRICT=1` turns into a failure.
//!
//! A test that needs a server configured otherwise (`postgres_tls`: TLS only) starts an
//! [`OwnCluster`] from a [`Setup`]; the shared cluster is started from the default one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::skip;

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
    let cluster = Arc::new(Cluster::start(&bin, &Setup::default()).await);
    *shared = Arc::downgrade(&cluster);
    Some(cluster)
}

/// How a cluster of a test's own differs from the shared one.
#[derive(Default)]
pub struct Setup<'a> {
    /// Files copied into the data directory before the server starts, owned by its user and
    /// readable by it alone, as PostgreSQL insists of a private key.
    pub files: &'a [&'a Path],
    /// Settings given to the server, `name=value`, each as a `-c`.
    pub settings: &'a [&'a str],
    /// The whole `pg_hba.conf`, instead of initdb's (trust for everything). It must trust
    /// `local` connections: [`OwnCluster::create_database`] and the wait for the server to
    /// come up use its Unix socket.
    pub hba: Option<&'a str>,
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
            cluster: Cluster::start(&bin, setup).await,
        })
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// Creates the database `name`, connecting over the Unix socket, whatever TCP demands.
    pub async fn create_database(&self, name: &str) {
        let client = self.cluster.local_client("postgres").await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    }

    /// A connection over the Unix socket to `database`, as the cluster's superuser.
    pub async fn local_client(&self, database: &str) -> tokio_postgres::Client {
        self.cluster.local_client(database).await
    }
}

/// The newest installed PostgreSQL's programs, as Debian lays them out.
pub(crate) fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A running cluster of the tests' own.
struct Cluster {
    server: Child,
    port: u16,
    dir: TempDir,
}

impl Cluster {
    async fn start(bin: &Path, setup: &Setup<'_>) -> Cluster {
        let dir = TempDir::new().expect("temp dir for the cluster");
        let user = ServerUser::for_this_process();
        user.own(dir.path());
        let data = dir.path().join("data");
        let initdb = user
            .command(&bin.join("initdb"))
            .arg("--pgdata")
            .arg(&data)
            .args(["--username", "postgres", "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        for file in setup.files {
            let name = file.file_name().expect("a file name");
            let copy = data.join(name);
            std::fs::copy(file, &copy).expect("copy a file into the cluster");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600))
                .expect("chmod a file of the cluster");
            user.own(&copy);
        }
        if let Some(hba) = setup.hba {
            std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let server = user
            .command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            // Throwaway data: what a crash would lose does not matter, and tests go faster
            // without flushing. kiln's own connections still ask for synchronous commits.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(setup.settings.iter().flat_map(|setting| ["-c", setting]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let cluster = Cluster { server, port, dir };
        cluster.wait_until_ready().await;
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's Unix socket configuration for `database`.
    fn local(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(self.port)
            .user("postgres")
            .dbname(database);
        config
    }

    async fn local_client(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = self
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

    /// Waits until the server takes connections, on its Unix socket, which every `pg_hba.conf`
    /// of these tests trusts, whatever it asks of TCP.
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let local = self.local("postgres");
        loop {
            match local.connect(tokio_postgres::NoTls).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(self.dir.path().join("server.log"));
                    panic!(
                        "PostgreSQL did not start on port {}: {e}\n{log:?}",
                        self.port
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for Cluster {
    /// Fast shutdown (SIGINT: roll back what is open, then stop), and SIGKILL if that hangs,
    /// before the directory goes.
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.server.id()) else {
            return;
        };
        // SAFETY: kill(2) on the server this struct started and has not yet reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Whom the cluster runs as: `postgres` when the tests run as root, else the tests' own user.
enum ServerUser {
    Me,
    Postgres { uid: u32, gid: u32 },
}

impl ServerUser {
    fn for_this_process() -> ServerUser {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return ServerUser::Me;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run id");
            assert!(
                out.status.success(),
                "the tests run as root, which PostgreSQL refuses, and there is no postgres \
                 user to run it as (Debian's postgresql package creates one)"
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        ServerUser::Postgres {
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    /// Gives `path` to this user: the directory it must write the cluster into, or a file the
    /// server reads.
    fn own(&self, path: &Path) {
        if let ServerUser::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).expect("chown for the cluster");
        }
    }

    /// `program` to be run as this user.
    fn command(&self, program: &Path) -> Command {
        match self {
            ServerUser::Me => Command::new(program),
            ServerUser::Postgres { uid, gid } => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(program)
                    // The tests' working directory may be closed to the postgres user.
                    .current_dir("/");
                command
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
