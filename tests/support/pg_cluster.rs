//! A throwaway PostgreSQL cluster: made with `initdb` in a scratch directory, listening on a free
//! loopback port and on a Unix socket inside that directory, and stopped, directory and all, when
//! dropped. The integration tests (`tests/it/pg.rs`) and the benchmarks (`benches/common/pg.rs`)
//! each include this file as a module of their own; what differs between them (fsync, settings,
//! whether the server dies with the thread that started it) is in [`Setup`].
//!
//! PostgreSQL refuses to run as root, and tests and benches run as root (the sandbox needs it),
//! so the cluster belongs to the `postgres` user that Debian's package creates: `setpriv`
//! (util-linux) runs `initdb` and the server as that user and execs them, so the child held here
//! is the server itself.

// Each crate that includes this file uses a part of it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How a cluster is made.
#[derive(Default)]
pub struct Setup<'a> {
    /// Where its directory goes; the system's temporary directory if `None`.
    pub parent: Option<&'a Path>,
    /// Files copied into the data directory before the server starts, owned by its user and
    /// readable by it alone, as PostgreSQL insists of a private key.
    pub files: &'a [&'a Path],
    /// Settings given to the server, `name=value`, each as a `-c`.
    pub settings: &'a [&'a str],
    /// The whole `pg_hba.conf`, instead of initdb's (trust for everything). It must trust
    /// `local` connections: the wait for the server to come up uses its Unix socket.
    pub hba: Option<&'a str>,
    /// Stops the server when the thread that started it ends (`setpriv --pdeathsig`): for a
    /// process that owns its cluster alone, so that a killed bench leaves no server behind. Not
    /// for a cluster that outlives the thread that started it, as the tests' shared one does.
    pub dies_with_starter: bool,
}

/// A running cluster.
pub struct Cluster {
    server: Child,
    port: u16,
    dir: TempDir,
}

impl Cluster {
    /// Makes and starts a cluster with the programs in `bin` (see [`postgres_bin`]), and waits
    /// until it takes connections.
    pub async fn start(bin: &Path, setup: &Setup<'_>) -> Cluster {
        let dir = match setup.parent {
            Some(parent) => TempDir::new_in(parent),
            None => TempDir::new(),
        }
        .expect("a directory for the cluster");
        let user = ServerUser::for_this_process();
        user.own(dir.path());
        let data = dir.path().join("data");
        let initdb = user
            .command(&bin.join("initdb"), false)
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
            .command(&bin.join("postgres"), setup.dies_with_starter)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
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

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id: the server's backends are its children.
    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    /// The URL of `database` on this cluster, over TCP, as the cluster's superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's Unix socket configuration for `database`.
    pub fn local(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(self.port)
            .user("postgres")
            .dbname(database);
        config
    }

    /// Waits until the server takes connections, on its Unix socket, which every
    /// `pg_hba.conf` given here trusts, whatever it asks of TCP.
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
        eprintln!("PostgreSQL did not stop within 10 s of SIGINT: killing it");
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The newest installed PostgreSQL's programs, as Debian lays them out.
pub fn postgres_bin() -> Option<PathBuf> {
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

/// Whom the cluster runs as: `postgres` when this process runs as root, else its own user.
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
                "this runs as root, which PostgreSQL refuses, and there is no postgres user to \
                 run it as (Debian's postgresql package creates one)"
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

    /// `program` to be run as this user; `dies_with_starter` as in [`Setup`].
    fn command(&self, program: &Path, dies_with_starter: bool) -> Command {
        match self {
            ServerUser::Me => Command::new(program),
            ServerUser::Postgres { uid, gid } => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups");
                if dies_with_starter {
                    command.arg("--pdeathsig=SIGINT");
                }
                command
                    .arg(program)
                    // This process's working directory may be closed to the postgres user.
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
