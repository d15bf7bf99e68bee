//! A throwaway PostgreSQL cluster for the benchmarks that measure kiln on PostgreSQL: made with
//! `initdb` in a scratch directory on the target directory's disk, listening on a free loopback
//! port (its unix socket inside that directory), with a fresh database per measurement, and
//! stopped, directory and all, when dropped.
//!
//! Why not the tests' `tests/it/pg.rs`: that one is shared between concurrent tests, reference
//! counted, turns a missing PostgreSQL into a skip and turns fsync off to go faster; a bench
//! owns its cluster alone, must fail when PostgreSQL is missing rather than report nothing, and
//! keeps fsync on, so that a durable commit costs here what it costs in a deployment.
//!
//! PostgreSQL refuses to run as root and the benches run as root (the sandbox needs it), so the
//! cluster belongs to the `postgres` user Debian's package creates, as in the tests: `setpriv`
//! runs `initdb` and the server as that user and execs them, so the child held here is the
//! server itself; `--pdeathsig` stops it should the bench be killed before it can clean up.

// Each bench target compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Enough for three worker nodes' pools, two API nodes' and the bench's own connections.
const MAX_CONNECTIONS: u32 = 400;

/// A running cluster of the bench's own.
pub struct Cluster {
    server: Child,
    port: u16,
    dir: TempDir,
}

impl Cluster {
    /// Makes and starts a cluster, and waits until it takes connections.
    pub async fn start() -> Cluster {
        let bin = postgres_bin().expect(
            "PostgreSQL is not installed: the cluster bench needs its server \
             (apt-get install postgresql)",
        );
        let dir =
            TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory for the cluster");
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
            .arg("-c")
            .arg(format!("max_connections={MAX_CONNECTIONS}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let cluster = Cluster { server, port, dir };
        cluster.wait_until_ready().await;
        cluster
    }

    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The postmaster's process id: the server's backends are its children.
    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    /// Creates an empty database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        connect(&self.url("postgres"))
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url(name)
    }

    /// Drops database `name`, closing what is still connected to it.
    pub async fn drop_database(&self, name: &str) {
        connect(&self.url("postgres"))
            .await
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap_or_else(|e| panic!("drop database {name}: {e}"));
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = self.url("postgres");
        loop {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
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
        eprintln!("PostgreSQL did not stop within 10 s of SIGINT: killing it");
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
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

/// The newest installed PostgreSQL's programs, as Debian lays them out.
fn postgres_bin() -> Option<PathBuf> {
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

/// Whom the cluster runs as: `postgres` when the bench runs as root, else the bench's own user.
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
                "the bench runs as root, which PostgreSQL refuses, and there is no postgres \
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

    /// Gives `dir` to this user, who must write the cluster into it.
    fn own(&self, dir: &Path) {
        if let ServerUser::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(dir, Some(*uid), Some(*gid)).expect("chown the cluster dir");
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
                    .arg("--pdeathsig=SIGINT")
                    .arg(program)
                    // The bench's working directory may be closed to the postgres user.
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
