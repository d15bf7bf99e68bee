//! The attack suite: hostile code submitted through the HTTP API exactly as a stranger would, each
//! test asserting that the attack was contained, and that the server and an honest job running at
//! the same time were unaffected (it succeeds with its exact output, `/healthz` answers, and no
//! process of the server's jobs is left afterwards).

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{Server, UID_SPAN, assert_valid_history, job_processes, skip};

// ---------------------------------------------------------------------------------------------
// The harness of the suite

/// The sandbox levels an attack is tried at: attacks on isolation (files, processes, network,
/// privileges) at both, attacks on resources (cgroups and rlimits, the same at both) at the
/// default only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// The default: every namespace, including a user namespace.
    Full,
    /// `--sandbox namespaces`: no user namespace; init is the host's root, the job an
    /// unprivileged host uid.
    Namespaces,
}

impl Level {
    async fn start(self, args: &[&str]) -> Server {
        let mut args = args.to_vec();
        if self == Level::Namespaces {
            args.extend(["--sandbox", "namespaces"]);
        }
        let server = Server::start_with(&args).await;
        let (_, ready) = server.get("/readyz").await;
        let expected = match self {
            Level::Full => "full",
            Level::Namespaces => "namespaces",
        };
        assert_eq!(ready["sandbox"]["level"], expected, "{ready}");
        server
    }
}

/// Runs the attack `$name(level)` as two tests, `$name::full` and `$name::namespaces`.
macro_rules! at_both_levels {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn full() {
                super::$name(super::Level::Full).await;
            }

            #[tokio::test]
            async fn namespaces() {
                super::$name(super::Level::Namespaces).await;
            }
        }
    };
}

/// The honest job: about a second of arithmetic and naps, with a result the test computes too.
const HONEST: &str = "\
import time
total = 0
for i in range(40):
    total = (total + sum(k * k for k in range(i * 20000, (i + 1) * 20000))) % 1000000007
    time.sleep(0.03)
print(total)
";

fn honest_expected() -> String {
    const P: u64 = 1_000_000_007;
    let total = (0..800_000u64).fold(0, |acc, k| (acc + k * k % P) % P);
    format!("{total}\n")
}

fn python(code: &str, limits: Value) -> Value {
    json!({"runtime": "python", "code": code, "limits": limits})
}

fn bash(code: &str, limits: Value) -> Value {
    json!({"runtime": "bash", "code": code, "limits": limits})
}

fn sh(code: &str, limits: Value) -> Value {
    json!({"runtime": "sh", "code": code, "limits": limits})
}

/// At most ~300 characters of `s`, for assertion messages.
fn short(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()),
        None => s.to_owned(),
    }
}

/// A job for assertion messages: everything but its output, which is shortened.
fn show(job: &Value) -> String {
    let mut job = job.clone();
    for stream in ["stdout", "stderr"] {
        if let Some(text) = job[stream].as_str() {
            job[stream] = Value::String(short(text));
        }
    }
    job.to_string()
}

fn stdout(job: &Value) -> &str {
    job["stdout"].as_str().unwrap_or("")
}

/// Submits the honest job and returns its id once it runs.
async fn start_honest(server: &Server) -> String {
    let id = server
        .submit(python(HONEST, json!({"wall_ms": 60_000, "cpu_ms": 30_000})))
        .await;
    server.running(&id).await;
    id
}

/// The honest job succeeded with its exact output, the server answers, and no process of this
/// server's jobs is left.
async fn assert_unaffected(server: &Server, honest: &str) {
    let job = server.finished(honest).await;
    assert_eq!(job["status"], "succeeded", "honest job: {}", show(&job));
    assert_eq!(
        stdout(&job),
        honest_expected(),
        "honest job: {}",
        show(&job)
    );
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "/healthz: {body}");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "/readyz: {body}");
    assert_no_job_process_left(server).await;
}

async fn assert_no_job_process_left(server: &Server) {
    let uids = server.job_uids();
    // Whatever is left must be gone for good: a short grace for the kernel, then a hard check.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = job_processes(uids.clone());
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = job_processes(uids.clone());
    }
    let described: Vec<String> = left
        .iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            )
        })
        .collect();
    assert!(
        described.is_empty(),
        "processes of this server's jobs survived: {described:?}"
    );
}

/// Runs `hostile` while the honest job runs, checks that the honest job, the server and the
/// process table are unaffected, and returns the hostile job for the test's own assertions.
async fn contained(server: &Server, hostile: Value) -> Value {
    let honest = start_honest(server).await;
    let id = server.submit(hostile).await;
    let job = server.finished(&id).await;
    assert_valid_history(&server.events(&id).await);
    assert_unaffected(server, &honest).await;
    job
}

/// Lines of the form `name result...` printed by a probe, by name.
fn probe_lines(job: &Value) -> Vec<(String, String)> {
    stdout(job)
        .lines()
        .map(|line| match line.split_once(' ') {
            Some((name, rest)) => (name.to_owned(), rest.to_owned()),
            None => (line.to_owned(), String::new()),
        })
        .collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// Resources

#[tokio::test]
async fn a_bash_fork_bomb_is_contained_by_the_process_limit() {
    let server = Server::start().await;
    let job = contained(
        &server,
        // `sleep` keeps the job's own shell alive, so that the bomb, not its exit, decides the end.
        bash(
            ":(){ :|:& };:\nsleep 30\n",
            json!({"processes": 32, "wall_ms": 2000, "output_bytes": 16384}),
        ),
    )
    .await;
    assert!(
        ["timed_out", "failed"].contains(&job["status"].as_str().unwrap_or("")),
        "{}",
        show(&job)
    );
    assert!(
        job["wall_ms"].as_u64().is_some_and(|ms| ms < 10_000),
        "ended by its limits: {}",
        show(&job)
    );
}

at_both_levels!(a_python_fork_loop_is_contained_by_the_process_limit);
async fn a_python_fork_loop_is_contained_by_the_process_limit(level: Level) {
    let server = level.start(&[]).await;
    let bomb = "\
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
";
    let job = contained(
        &server,
        python(
            bomb,
            json!({"processes": 32, "wall_ms": 2000, "cpu_ms": 2000, "output_bytes": 16384}),
        ),
    )
    .await;
    assert!(
        ["timed_out", "failed"].contains(&job["status"].as_str().unwrap_or("")),
        "{}",
        show(&job)
    );
    assert!(
        job["wall_ms"].as_u64().is_some_and(|ms| ms < 10_000),
        "ended by its limits: {}",
        show(&job)
    );
}

#[tokio::test]
async fn a_memory_bomb_ends_with_the_memory_limit() {
    let server = Server::start().await;
    // 2 GiB in 64 MiB chunks, every page touched.
    let bomb = "\
chunks = []
for _ in range(32):
    chunks.append(b'x' * (64 << 20))
print('allocated 2 GiB')
";
    let job = contained(
        &server,
        python(bomb, json!({"memory_mb": 128, "wall_ms": 10_000})),
    )
    .await;
    assert_eq!(job["status"], "failed", "{}", show(&job));
    assert_eq!(job["outcome"], "memory_limit", "{}", show(&job));
    assert_eq!(stdout(&job), "", "{}", show(&job));
    assert!(
        job["memory_kb"]
            .as_u64()
            .is_some_and(|kb| kb <= (128 + 8) * 1024),
        "{}",
        show(&job)
    );
}

/// Used bytes of the file system holding `path`.
fn used_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain C data; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// Bytes of regular files under `path`.
fn tree_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Writes until refused: one big file, then many files of 4 MiB, in each writable place.
const FILL: &str = "\
import errno, os
def code(e):
    return errno.errorcode.get(e.errno, str(e.errno))
def big(d):
    written, err = 0, 'none'
    try:
        with open(os.path.join(d, 'big'), 'wb') as f:
            while written < (1 << 30):
                f.write(b'\\0' * (1 << 20))
                f.flush()
                written += 1 << 20
    except OSError as e:
        err = code(e)
    print('big', d, written, err, flush=True)
    os.unlink(os.path.join(d, 'big'))
def many(d):
    written, err, i = 0, 'none', 0
    try:
        while written < (1 << 30):
            with open(os.path.join(d, 'fill%d' % i), 'wb') as f:
                for _ in range(4):
                    f.write(b'\\0' * (1 << 20))
                    f.flush()
                    written += 1 << 20
            i += 1
    except OSError as e:
        err = code(e)
    print('many', d, written, err, flush=True)
for d in ['/work', '/tmp', '/dev/shm']:
    big(d)
for d in ['/work', '/tmp', '/dev/shm']:
    many(d)
";

#[tokio::test]
async fn filling_the_disk_is_stopped_by_the_file_size_limit_and_the_tmpfs_sizes() {
    let server = Server::start().await;
    const LIMIT: u64 = 8 << 20;
    let used_before = used_bytes(server.dir.path());
    let job = contained(
        &server,
        python(FILL, json!({"file_bytes": LIMIT, "wall_ms": 20_000})),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let lines: Vec<Vec<&str>> = stdout(&job)
        .lines()
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(lines.len(), 6, "{}", show(&job));
    for line in &lines {
        let [kind, dir, written, err] = line[..] else {
            panic!("unexpected line {line:?}");
        };
        let written: u64 = written.parse().unwrap();
        // One file: the file size limit (EFBIG); many: the tmpfs size (ENOSPC).
        let expected = if kind == "big" { "EFBIG" } else { "ENOSPC" };
        assert_eq!(err, expected, "{kind} {dir}: {}", show(&job));
        assert!(written <= LIMIT, "{kind} {dir} wrote {written} bytes");
    }
    // Nothing landed on the host: the server's directory holds its database and log only, and
    // the disk did not take the gigabytes the job tried to write (the slack is for whatever
    // else writes to this disk meanwhile, such as other tests or a build).
    let kept = tree_bytes(server.dir.path());
    assert!(kept < LIMIT, "the server's directory holds {kept} bytes");
    let grown = used_bytes(server.dir.path()).saturating_sub(used_before);
    assert!(grown < 512 << 20, "the host disk grew by {grown} bytes");
}

#[tokio::test]
async fn dd_of_a_huge_file_stops_at_the_file_size_limit() {
    let server = Server::start().await;
    let code = "\
for f in /work/huge /tmp/huge /dev/shm/huge; do
  dd if=/dev/zero of=$f bs=1M count=4096 2>/dev/null
  echo \"$f $? $(stat -c %s $f)\"
  rm -f $f
done
";
    let job = contained(
        &server,
        bash(code, json!({"file_bytes": 4 << 20, "wall_ms": 20_000})),
    )
    .await;
    // dd is killed by SIGXFSZ (exit status 128 + 25) with the file at the limit.
    assert_eq!(
        stdout(&job),
        "/work/huge 153 4194304\n/tmp/huge 153 4194304\n/dev/shm/huge 153 4194304\n",
        "{}",
        show(&job)
    );
}

/// A job's tmpfs mounts take huge pages where the kernel has them, so a large file (a build, an
/// input) is written in 2 MB pages rather than 512 of 4 KB each; what is written there in them
/// reads back whole.
#[tokio::test]
async fn the_jobs_tmpfs_mounts_use_huge_pages_where_the_kernel_has_them() {
    let server = Server::start().await;
    let code = "\
data = bytes(range(256)) * (3 << 12)
for d in ['/work', '/tmp', '/dev/shm']:
    with open(d + '/big', 'wb') as f:
        f.write(data)
    with open(d + '/big', 'rb') as f:
        back = f.read()
    options = [l.split(' - ')[1].split()[2] for l in open('/proc/self/mountinfo') if l.split()[4] == d]
    print(d, back == data, 'huge=within_size' in options[0].split(','))
";
    let id = server
        .submit(python(code, json!({"file_bytes": 8 << 20})))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let huge =
        match std::path::Path::new("/sys/kernel/mm/transparent_hugepage/shmem_enabled").exists() {
            true => "True",
            false => "False",
        };
    assert_eq!(
        stdout(&job),
        format!("/work True {huge}\n/tmp True {huge}\n/dev/shm True {huge}\n"),
        "{}",
        show(&job)
    );
}

#[tokio::test]
async fn filling_tmpfs_past_the_memory_limit_ends_with_the_memory_limit() {
    let server = Server::start().await;
    // The file limit and tmpfs sizes allow 1.5 GiB; the files are memory, charged to the job.
    let job = contained(
        &server,
        python(
            FILL,
            json!({"file_bytes": 512 << 20, "memory_mb": 64, "wall_ms": 20_000}),
        ),
    )
    .await;
    assert_eq!(job["status"], "failed", "{}", show(&job));
    assert_eq!(job["outcome"], "memory_limit", "{}", show(&job));
}

#[tokio::test]
async fn an_output_flood_ends_with_the_output_limit() {
    let server = Server::start().await;
    let flood = "\
import sys
line = 'kiln ' * 1000 + '\\n'
while True:
    sys.stdout.write(line)
";
    let job = contained(
        &server,
        python(flood, json!({"output_bytes": 65536, "wall_ms": 10_000})),
    )
    .await;
    assert_eq!(job["status"], "failed", "{}", show(&job));
    assert_eq!(job["outcome"], "output_limit", "{}", show(&job));
    assert_eq!(job["stdout_truncated"], true, "{}", show(&job));
    assert_eq!(stdout(&job).len(), 65536, "{}", show(&job));
}

#[tokio::test]
async fn a_busy_loop_ends_with_the_cpu_time_limit() {
    let server = Server::start().await;
    let job = contained(
        &server,
        python(
            "while True:\n    pass\n",
            json!({"cpu_ms": 1000, "wall_ms": 20_000}),
        ),
    )
    .await;
    assert_eq!(job["status"], "timed_out", "{}", show(&job));
    assert_eq!(job["outcome"], "cpu_time_limit", "{}", show(&job));
}

#[tokio::test]
async fn a_busy_loop_relayed_across_forked_processes_is_stopped_at_the_jobs_cpu_limit() {
    let server = Server::start().await;
    // RLIMIT_CPU counts per process: each worker burns less than the limit, then hands over to
    // a fresh child. Two such relays use two cores for as long as the job is let run.
    let relay = "\
import os, time
def burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
for _ in range(2):
    if os.fork() == 0:
        while True:
            burn(0.3)
            if os.fork() != 0:
                os._exit(0)
time.sleep(8)
print('done')
";
    let job = contained(
        &server,
        python(relay, json!({"cpu_ms": 1000, "wall_ms": 10_000})),
    )
    .await;
    assert_eq!(job["status"], "timed_out", "{}", show(&job));
    assert_eq!(job["outcome"], "cpu_time_limit", "{}", show(&job));
    assert!(
        job["cpu_ms"].as_u64().is_some_and(|ms| ms < 2000),
        "the job's processes used at most about its CPU limit: {}",
        show(&job)
    );
}

// ---------------------------------------------------------------------------------------------
// Survivors

at_both_levels!(daemons_double_forks_and_setsid_do_not_outlive_the_job);
async fn daemons_double_forks_and_setsid_do_not_outlive_the_job(level: Level) {
    let server = level.start(&[]).await;
    let daemonize = "\
import os, subprocess, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.closerange(0, 3)
        time.sleep(100)
    os._exit(0)
os.system('nohup sleep 100 >/dev/null 2>&1 &')
os.system('setsid sleep 100 &')
os.system('(sleep 100 &) &')
subprocess.Popen(['sleep', '100'], start_new_session=True)
time.sleep(0.3)
print('parent exits')
";
    let job = contained(&server, python(daemonize, json!({"wall_ms": 30_000}))).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    assert_eq!(stdout(&job), "parent exits\n");
    // A daemon holding stdout open does not keep the job going until its wall limit.
    assert!(
        job["wall_ms"].as_u64().is_some_and(|ms| ms < 10_000),
        "{}",
        show(&job)
    );
}

at_both_levels!(kill_minus_one_and_killing_the_servers_pid_leave_the_server_unaffected);
async fn kill_minus_one_and_killing_the_servers_pid_leave_the_server_unaffected(level: Level) {
    let server = level.start(&[]).await;
    let code = format!(
        "kill -9 {server} 1 2>&1; echo \"server $?\"\nkill -KILL -1; echo \"all $?\"\n\
         kill -STOP -1; echo \"stop $?\"\n",
        server = server.pid()
    );
    let job = contained(&server, bash(&code, json!({"wall_ms": 5000}))).await;
    assert!(
        ["succeeded", "failed"].contains(&job["status"].as_str().unwrap_or("")),
        "{}",
        show(&job)
    );
    // Neither the server's pid nor the namespace's init could be signalled.
    assert!(stdout(&job).contains("\nserver 1\n"), "{}", show(&job));
    // Still the same server process, answering.
    let (status, _) = server.get("/v1/runtimes").await;
    assert_eq!(status, StatusCode::OK);
    assert!(std::path::Path::new(&format!("/proc/{}", server.pid())).exists());
}

// ---------------------------------------------------------------------------------------------
// Network

at_both_levels!(tcp_udp_and_abstract_unix_sockets_cannot_reach_a_listener_on_the_host);
async fn tcp_udp_and_abstract_unix_sockets_cannot_reach_a_listener_on_the_host(level: Level) {
    let server = level.start(&[]).await;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let abstract_name = unique("kiln-attack");
    let unix = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    unix.set_nonblocking(true).unwrap();
    let code = format!(
        "\
import errno, socket
def attempt(name, f):
    try:
        f()
        print(name, 'REACHED')
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e), flush=True)
def tcp(family, host):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect((host, {tcp}))
    s.sendall(b'leak')
def udp(family, host):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.sendto(b'leak', (host, {udp}))
def unix():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect('\\0{abstract_name}')
    s.sendall(b'leak')
attempt('tcp4', lambda: tcp(socket.AF_INET, '127.0.0.1'))
attempt('tcp6', lambda: tcp(socket.AF_INET6, '::ffff:127.0.0.1'))
attempt('tcp_localhost', lambda: socket.create_connection(('localhost', {tcp}), timeout=2))
attempt('udp4', lambda: udp(socket.AF_INET, '127.0.0.1'))
attempt('udp6', lambda: udp(socket.AF_INET6, '::ffff:127.0.0.1'))
attempt('unix_abstract', unix)
",
        tcp = tcp.local_addr().unwrap().port(),
        udp = udp.local_addr().unwrap().port(),
    );
    let job = contained(&server, python(&code, json!({"wall_ms": 10_000}))).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let lines = probe_lines(&job);
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "tcp4",
            "tcp6",
            "tcp_localhost",
            "udp4",
            "udp6",
            "unix_abstract"
        ],
        "{}",
        show(&job)
    );
    for (name, result) in &lines {
        assert_ne!(result, "REACHED", "{name}: {}", show(&job));
    }
    assert_eq!(
        tcp.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the TCP listener got a connection"
    );
    let mut buf = [0u8; 64];
    assert_eq!(
        udp.recv_from(&mut buf).map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the UDP socket got a datagram"
    );
    assert_eq!(
        unix.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the abstract unix socket got a connection"
    );
}

at_both_levels!(name_resolution_fails);
async fn name_resolution_fails(level: Level) {
    let server = level.start(&[]).await;
    let code = "\
import socket
try:
    print('resolved', socket.getaddrinfo('example.com', 80))
except OSError as e:
    print('refused', e)
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01', ('1.1.1.1', 53))
    s.settimeout(2)
    print('answered', s.recv(512))
except OSError as e:
    print('refused', e)
";
    let job = contained(&server, python(code, json!({"wall_ms": 10_000}))).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let lines = probe_lines(&job);
    assert_eq!(lines.len(), 2, "{}", show(&job));
    assert!(
        lines.iter().all(|(what, _)| what == "refused"),
        "{}",
        show(&job)
    );
}

// ---------------------------------------------------------------------------------------------
// Reading what is not the job's

/// Tries to read each path given as an argument: `path LISTED ...` / `path READ n` on success,
/// `path ERRNO` on failure.
const READ_PROBE: &str = "\
import errno, os, sys
for p in sys.argv[1:]:
    try:
        if os.path.isdir(p):
            print(p, 'LISTED', os.listdir(p)[:5])
        else:
            with open(p, 'rb') as f:
                print(p, 'READ', len(f.read()))
    except OSError as e:
        print(p, errno.errorcode.get(e.errno, e.errno))
";

at_both_levels!(host_secrets_the_database_and_the_servers_proc_entries_are_unreadable);
async fn host_secrets_the_database_and_the_servers_proc_entries_are_unreadable(level: Level) {
    let server = level.start(&[]).await;
    let db = server.db_path().display().to_string();
    let dir = server.dir.path().display().to_string();
    let pid = server.pid();
    let paths = [
        "/etc/shadow".to_owned(),
        "/etc/gshadow".to_owned(),
        "/etc/sudoers".to_owned(),
        db.clone(),
        format!("{db}-wal"),
        format!("{dir}/server.log"),
        dir.clone(),
        format!("{dir}/work"),
        "/root".to_owned(),
        "/root/.ssh/id_rsa".to_owned(),
        "/home".to_owned(),
        "/var/lib".to_owned(),
        "/sys/kernel".to_owned(),
        "/proc/1/environ".to_owned(),
        "/proc/1/mem".to_owned(),
        "/proc/1/root/etc".to_owned(),
        format!("/proc/{pid}/environ"),
        format!("/proc/{pid}/cmdline"),
        format!("/proc/{pid}/root"),
    ];
    let job = contained(
        &server,
        json!({"runtime": "python", "code": READ_PROBE, "args": paths, "limits": {"wall_ms": 10_000}}),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let lines = stdout(&job).lines().collect::<Vec<_>>();
    assert_eq!(lines.len(), paths.len(), "{}", show(&job));
    for (line, path) in lines.iter().zip(&paths) {
        let rest = line.strip_prefix(path.as_str()).unwrap_or(line);
        assert!(
            [" ENOENT", " EACCES", " EPERM"].contains(&rest),
            "{path} was readable: {line}"
        );
    }
}

at_both_levels!(a_job_cannot_learn_the_servers_command_line_or_environment_from_proc);
async fn a_job_cannot_learn_the_servers_command_line_or_environment_from_proc(level: Level) {
    let server = level.start(&[]).await;
    let db = server.db_path().display().to_string();
    // What the server was started with: its database path, its flags, its environment
    // (the harness sets RUST_LOG, cargo sets CARGO_*).
    let markers = [db.as_str(), "--sandbox-uid-base", "RUST_LOG", "CARGO_"];
    let code = "\
import os, sys
markers = [m.encode() for m in sys.stdin.read().split()]
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print('pids', len(pids), pids[:20])
for pid in pids:
    for name in ['cmdline', 'environ', 'status', 'comm', 'mountinfo']:
        try:
            with open(f'/proc/{pid}/{name}', 'rb') as f:
                data = f.read()
        except OSError:
            continue
        for m in markers:
            if m in data:
                print('LEAK', pid, name, m.decode())
";
    let job = contained(
        &server,
        json!({
            "runtime": "python",
            "code": code,
            "stdin": markers.join("\n"),
            "limits": {"wall_ms": 10_000},
        }),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let leaks: Vec<&str> = stdout(&job)
        .lines()
        .filter(|l| l.starts_with("LEAK"))
        .collect();
    assert!(leaks.is_empty(), "{leaks:?}");
    // Only the job's own processes: no host process is listed.
    let (_, pids) = probe_lines(&job)
        .into_iter()
        .find(|(what, _)| what == "pids")
        .expect("pids line");
    let count: usize = pids.split(' ').next().unwrap().parse().unwrap();
    assert!(count <= 3, "the job sees {pids}");
}

at_both_levels!(another_running_jobs_files_are_invisible);
async fn another_running_jobs_files_are_invisible(level: Level) {
    let server = level.start(&["--workers", "3"]).await;
    let honest = start_honest(&server).await;
    let name = unique("kiln-secret");
    let token = unique("token");
    // A keeps its secret, ending at once should it vanish, until the test has seen B end and
    // cancels it: however long B's search takes on a loaded machine, it runs while A does.
    let a = server
        .submit(sh(
            &format!(
                "for d in /work /tmp /dev/shm; do echo {token} > $d/{name}; done\n\
                 while [ -e /work/{name} ]; do sleep 0.2; done\n\
                 exit 7\n"
            ),
            json!({"wall_ms": 120_000}),
        ))
        .await;
    server.running(&a).await;
    // Let A write its files before B looks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let search = "\
ls -la /work /tmp /dev/shm
find / -path /proc -prune -o -name 'kiln-secret-*' -print 2>/dev/null
ls -la /proc/*/root/work /proc/*/root/tmp /proc/*/cwd/ 2>&1
cat /proc/*/root/work/kiln-secret-* /proc/*/root/tmp/kiln-secret-* 2>&1
grep -rs token- /work /tmp /dev/shm 2>&1
true
";
    let b = server.submit(sh(search, json!({"wall_ms": 60_000}))).await;
    let b = server.finished(&b).await;
    let (_, a_then) = server.get(&format!("/v1/jobs/{a}")).await;
    assert_eq!(
        a_then["status"],
        "running",
        "A kept its secret until B ended: {}",
        show(&a_then)
    );
    let (status, a) = server
        .post(&format!("/v1/jobs/{a}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(b["status"], "succeeded", "{}", show(&b));
    for stream in ["stdout", "stderr"] {
        let text = b[stream].as_str().unwrap_or("");
        assert!(
            !text.contains(&name) && !text.contains(&token),
            "B found A's secret: {}",
            show(&b)
        );
    }
    assert_unaffected(&server, &honest).await;
}

// ---------------------------------------------------------------------------------------------
// Writing what is not the job's

at_both_levels!(writing_outside_the_work_directory_is_refused);
async fn writing_outside_the_work_directory_is_refused(level: Level) {
    let server = level.start(&[]).await;
    let name = unique("kiln-attack");
    let targets = [
        format!("/usr/bin/{name}"),
        format!("/etc/{name}"),
        format!("/{name}"),
        format!("/bin/{name}"),
        format!("/lib/{name}"),
        format!("/proc/{name}"),
        format!("/dev/{name}"),
        "/etc/passwd".to_owned(),
        "/proc/sys/kernel/hostname".to_owned(),
        "/proc/1/oom_score_adj".to_owned(),
    ];
    let code = format!(
        "for p in {}; do\n\
           if (echo x >> \"$p\") 2>/dev/null; then echo \"$p WROTE\"; else echo \"$p refused\"; fi\n\
         done\n\
         mkdir /etc/{name}.d 2>/dev/null && echo 'mkdir WROTE'\n\
         ln -s /work /usr/{name} 2>/dev/null && echo 'symlink WROTE'\n\
         echo ok > /work/inside && echo work-ok\n\
         echo ok > /tmp/inside && echo tmp-ok\n",
        targets.join(" ")
    );
    let job = contained(&server, sh(&code, json!({"wall_ms": 10_000}))).await;
    let out = stdout(&job);
    assert!(!out.contains("WROTE"), "{}", show(&job));
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" refused")).count(),
        targets.len(),
        "{}",
        show(&job)
    );
    assert!(
        out.contains("work-ok\n") && out.contains("tmp-ok\n"),
        "{}",
        show(&job)
    );
    for host in [
        format!("/usr/bin/{name}"),
        format!("/etc/{name}"),
        format!("/{name}"),
        format!("/usr/{name}"),
    ] {
        assert!(
            std::fs::symlink_metadata(&host).is_err(),
            "{host} exists on the host"
        );
    }
}

#[tokio::test]
async fn file_names_that_leave_the_work_directory_are_rejected_at_submit() {
    let server = Server::start().await;
    let honest = start_honest(&server).await;
    let name = unique("kiln-attack");
    for bad in [
        format!("../../{name}"),
        format!("/{name}"),
        format!("/tmp/{name}"),
        format!("a/../../{name}"),
        format!("./{name}"),
        format!("a//{name}"),
        "..".to_owned(),
        ".".to_owned(),
        format!("{name}\n"),
    ] {
        let (status, body) = server
            .post(
                "/v1/jobs",
                &json!({"runtime": "sh", "code": "true", "files": {bad.clone(): "pwned"}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{bad:?}: {body}");
    }
    let (_, list) = server.get("/v1/jobs").await;
    let jobs = list["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "only the honest job exists: {list}");
    for host in [
        server.dir.path().join(&name),
        std::path::Path::new("/").join(&name),
        std::path::Path::new("/tmp").join(&name),
    ] {
        assert!(!host.exists(), "{} was created", host.display());
    }
    assert_unaffected(&server, &honest).await;
}

at_both_levels!(symlinks_planted_in_work_are_never_followed_on_the_host);
async fn symlinks_planted_in_work_are_never_followed_on_the_host(level: Level) {
    let server = level.start(&[]).await;
    let canary = server.dir.path().join("canary");
    std::fs::write(&canary, "intact").unwrap();
    let shadow_before = std::fs::read("/etc/shadow").ok();
    let code = format!(
        "\
cd /work
ln -s {canary} canary
ln -s /etc/shadow shadow
ln -s {dir} server
ln -s / root
ln -sf {canary} nested/file.txt
ln -s {canary} main.sh.new && mv -f main.sh.new main.sh
echo pwned > canary
echo pwned > shadow
echo pwned > server/kiln.db
ls server/ root/ 2>&1 | head -n 20
true
",
        canary = canary.display(),
        dir = server.dir.path().display(),
    );
    let job = contained(
        &server,
        json!({
            "runtime": "bash",
            "code": code,
            "files": {"nested/file.txt": "staged", "other/deeper/x": "staged"},
            "limits": {"wall_ms": 10_000},
        }),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "intact");
    assert_eq!(std::fs::read("/etc/shadow").ok(), shadow_before);
    assert!(server.db_path().is_file());
    // The run's staging directory goes (in the background, right after the result), and
    // nothing else was removed with it.
    let work_root = server.dir.path().join("work");
    let runs_left = || -> BTreeSet<String> {
        std::fs::read_dir(&work_root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !runs_left().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        runs_left().is_empty(),
        "left in the work root: {:?}",
        runs_left()
    );
}

at_both_levels!(files_sockets_and_sysv_ipc_left_by_a_job_are_not_seen_by_the_next_jobs);
/// What one job leaves — files in `/tmp`, `/dev/shm` and `/work`, a SysV segment, and an
/// abstract UNIX socket still listening in a daemon it forked — is gone for the jobs after it.
/// Several follow: network namespaces are reused from run to run (`src/sandbox/netns.rs`), so
/// one of them likely runs in the namespace the first job had.
async fn files_sockets_and_sysv_ipc_left_by_a_job_are_not_seen_by_the_next_jobs(level: Level) {
    let server = level.start(&[]).await;
    let honest = start_honest(&server).await;
    let name = unique("kiln-left");
    let leave = format!(
        "\
import ctypes, os, socket, time
for d in ['/tmp', '/dev/shm', '/work']:
    with open(f'{{d}}/{name}', 'w') as f:
        f.write('left')
libc = ctypes.CDLL(None, use_errno=True)
print('shm', libc.shmget(0x6b696c6e, 4096, 0o1666))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind('\\0{name}')
s.listen()
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
    os._exit(0)
"
    );
    let first = server
        .submit(python(&leave, json!({"wall_ms": 10_000})))
        .await;
    let first = server.finished(&first).await;
    assert_eq!(first["status"], "succeeded", "{}", show(&first));
    assert!(
        !stdout(&first).starts_with("shm -1"),
        "the first job made its segment: {}",
        show(&first)
    );
    let look = format!(
        "\
import ctypes, errno, os, socket
for d in ['/tmp', '/dev/shm', '/work']:
    print(d, os.path.exists(f'{{d}}/{name}'), sorted(os.listdir(d)))
libc = ctypes.CDLL(None, use_errno=True)
r = libc.shmget(0x6b696c6e, 0, 0)
print('shm', r, errno.errorcode.get(ctypes.get_errno()))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect('\\0{name}')
    print('socket connected')
except OSError as e:
    print('socket', errno.errorcode[e.errno])
with open('/proc/net/unix') as f:
    print('listed', '{name}' in f.read())
"
    );
    for _ in 0..3 {
        let next = server
            .submit(python(&look, json!({"wall_ms": 10_000})))
            .await;
        let next = server.finished(&next).await;
        assert_eq!(next["status"], "succeeded", "{}", show(&next));
        assert_eq!(
            stdout(&next),
            "/tmp False []\n/dev/shm False []\n/work False ['main.py']\nshm -1 ENOENT\n\
             socket ECONNREFUSED\nlisted False\n",
            "{}",
            show(&next)
        );
    }
    assert_unaffected(&server, &honest).await;
}

// ---------------------------------------------------------------------------------------------
// Privileges

at_both_levels!(privileged_system_calls_are_refused);
async fn privileged_system_calls_are_refused(level: Level) {
    let server = level.start(&[]).await;
    let code = "\
import ctypes, errno, os, platform, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {
    'x86_64': dict(ptrace=101, mount=165, umount2=166, chroot=161, pivot_root=155, unshare=272,
                   setns=308, clone=56, perf_event_open=298, bpf=321, setuid=105, setgid=106,
                   io_uring_setup=425, keyctl=250, userfaultfd=323, sethostname=170,
                   process_vm_readv=310, personality=135),
    'aarch64': dict(ptrace=117, mount=40, umount2=39, chroot=51, pivot_root=41, unshare=97,
                    setns=268, clone=220, perf_event_open=241, bpf=280, setuid=146, setgid=144,
                    io_uring_setup=425, keyctl=219, userfaultfd=282, sethostname=161,
                    process_vm_readv=270, personality=92),
}[platform.machine()]
def arg(a):
    return a if isinstance(a, (bytes, ctypes.Array)) else ctypes.c_long(a)
def call(label, name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[arg(a) for a in args])
    e = ctypes.get_errno()
    if r == 0 and name == 'clone':
        os._exit(0)
    if r > 0 and name == 'clone':
        os.waitpid(r, 0)
    print(label, r, errno.errorcode.get(e, e), flush=True)
call('ptrace_traceme', 'ptrace', 0, 0, 0, 0)
call('ptrace_attach_init', 'ptrace', 16, 1, 0, 0)
call('mount_tmpfs', 'mount', b'none', b'/tmp', b'tmpfs', 0, 0)
call('umount_proc', 'umount2', b'/proc', 2)
call('chroot', 'chroot', b'/tmp')
call('pivot_root', 'pivot_root', b'/tmp', b'/tmp')
call('unshare_user', 'unshare', 0x10000000)
call('unshare_mount', 'unshare', 0x00020000)
call('unshare_net', 'unshare', 0x40000000)
call('setns', 'setns', os.open('/proc/self/ns/mnt', os.O_RDONLY), 0)
call('clone_newuser', 'clone', 0x10000000 | 17, 0, 0, 0, 0)
perf = ctypes.create_string_buffer(128)
struct.pack_into('IIQ', perf, 0, 1, 128, 0)
call('perf_event_open', 'perf_event_open', perf, 0, -1, -1, 0)
bpf = ctypes.create_string_buffer(72)
struct.pack_into('IIII', bpf, 0, 2, 4, 4, 1)
call('bpf_map_create', 'bpf', 0, bpf, 72)
call('setuid_root', 'setuid', 0)
call('setgid_root', 'setgid', 0)
uring = ctypes.create_string_buffer(120)
call('io_uring_setup', 'io_uring_setup', 1, uring)
call('keyctl_session', 'keyctl', 1, 0)
call('userfaultfd', 'userfaultfd', 0)
call('sethostname', 'sethostname', b'evil', 4)
local = ctypes.create_string_buffer(8)
iov = struct.pack('QQ', ctypes.addressof(local), 8)
call('process_vm_readv', 'process_vm_readv', 1, iov, 1, iov, 1, 0)
call('personality_read_implies_exec', 'personality', 0x0400000)
for dev in ['/dev/mem', '/dev/kmem', '/dev/port', '/dev/sda', '/dev/kvm']:
    try:
        os.close(os.open(dev, os.O_RDONLY))
        print('open' + dev.replace('/', '_'), 0, 'OPENED')
    except OSError as e:
        print('open' + dev.replace('/', '_'), -1, errno.errorcode.get(e.errno, e.errno))
print('uid', os.getuid(), os.geteuid(), os.getgid())
";
    let job = contained(&server, python(code, json!({"wall_ms": 10_000}))).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let lines = probe_lines(&job);
    assert_eq!(lines.len(), 27, "{}", show(&job));
    for (name, result) in &lines {
        if name == "uid" {
            // Real, effective uid and gid: all the job's own, unprivileged id.
            let ids: Vec<u32> = result.split(' ').map(|v| v.parse().unwrap()).collect();
            assert!(ids.iter().all(|id| *id == ids[0]), "{result}");
            match level {
                Level::Full => assert_eq!(ids[0], 1000, "{result}"),
                Level::Namespaces => assert!(
                    (server.uid_base + 1..server.uid_base + UID_SPAN).contains(&ids[0]),
                    "{result}"
                ),
            }
            continue;
        }
        let (code, errno) = result.split_once(' ').unwrap_or((result, ""));
        assert_eq!(code, "-1", "{name} succeeded: {result}");
        assert!(
            errno.starts_with('E'),
            "{name} failed without an errno: {result}"
        );
    }
}

at_both_levels!(the_environment_is_exactly_path_home_tmpdir_lang_pwd_and_the_progress_fd);
async fn the_environment_is_exactly_path_home_tmpdir_lang_pwd_and_the_progress_fd(level: Level) {
    let server = level.start(&[]).await;
    let job = contained(&server, sh("printenv", json!({"wall_ms": 10_000}))).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let env: BTreeSet<&str> = stdout(&job).lines().collect();
    let names: BTreeSet<&str> = env
        .iter()
        .map(|l| l.split_once('=').map_or(*l, |(k, _)| k))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["HOME", "KILN_PROGRESS_FD", "LANG", "PATH", "PWD", "TMPDIR"]),
        "{}",
        show(&job)
    );
    for expected in [
        "HOME=/work",
        "TMPDIR=/tmp",
        "PWD=/work",
        "KILN_PROGRESS_FD=3",
    ] {
        assert!(env.contains(expected), "{expected}: {}", show(&job));
    }
}

/// `/proc/<pid>/status` as `field → value` (trimmed), or `None` once the process is gone.
fn proc_status(pid: i32) -> Option<std::collections::BTreeMap<String, String>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

/// Every live descendant of `root`, by walking `/proc/*/status` parent links.
fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let status = proc_status(pid)?;
            Some((pid, status.get("PPid")?.parse().ok()?))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

at_both_levels!(the_job_runs_as_an_unprivileged_host_uid_from_the_servers_range);
/// In a user namespace the job is uid 1000, mapped (like the namespace's root) into the server's
/// range; without one (`namespaces`) it runs as a host uid of that range directly, and only init,
/// which never runs submitted code, is the host's root.
async fn the_job_runs_as_an_unprivileged_host_uid_from_the_servers_range(level: Level) {
    let server = level.start(&[]).await;
    let honest = start_honest(&server).await;
    let id = server
        .submit(sh(
            "id -u; id -g; cat /proc/self/uid_map; exec sleep 2",
            json!({"wall_ms": 20_000}),
        ))
        .await;
    server.running(&id).await;
    // Wait until the job's sleep runs, then look at every process the server started.
    let server_pid = i32::try_from(server.pid()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (processes, job_uid) = loop {
        let found = descendants(server_pid);
        let sleep = found.iter().find_map(|&pid| {
            let status = proc_status(pid)?;
            (status.get("Name")? == "sleep").then(|| status["Uid"].clone())
        });
        if let Some(uid) = sleep {
            break (found, uid.split_whitespace().next().unwrap().to_owned());
        }
        assert!(Instant::now() < deadline, "the job's sleep never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let range = server.uid_base..server.uid_base + UID_SPAN;
    let server_exe = std::fs::read_link(format!("/proc/{server_pid}/exe")).unwrap();
    let mut checked = 0;
    for pid in processes {
        let Some(status) = proc_status(pid) else {
            continue;
        };
        // A ready sandbox's job process waits for its run in the server's own code, as the
        // namespace's root, like init; what runs submitted code has exec'd something else.
        let waiting = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == server_exe);
        let init = waiting || status["PPid"] == server_pid.to_string();
        for field in ["Uid", "Gid"] {
            let ids: Vec<u32> = status[field]
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(ids.len(), 4);
            if init && level == Level::Namespaces {
                continue;
            }
            assert!(
                ids.iter().all(|id| *id != 0 && range.contains(id)),
                "process {pid} ({}) has {field} {ids:?}, outside {range:?}",
                status["Name"]
            );
        }
        if !init {
            for caps in ["CapEff", "CapPrm", "CapAmb"] {
                assert_eq!(status[caps], "0000000000000000", "{pid}: {status:?}");
            }
            assert_eq!(status["NoNewPrivs"], "1", "{pid}: {status:?}");
            assert_eq!(status["Seccomp"], "2", "{pid}: {status:?}");
        }
        checked += 1;
    }
    assert!(checked >= 3, "init, the job and the honest job");
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let out = stdout(&job);
    let lines: Vec<&str> = out.lines().collect();
    let inside = match level {
        Level::Full => "1000",
        Level::Namespaces => job_uid.as_str(),
    };
    assert_eq!(
        lines.get(..2),
        Some(&[inside, inside][..]),
        "{}",
        show(&job)
    );
    if level == Level::Full {
        // uid_map: inside, host, count: the namespace's root and the job, each one host id of
        // this server's range.
        assert_eq!(lines.len(), 4, "two mapped ids: {}", show(&job));
        for line in &lines[2..] {
            let fields: Vec<u32> = line
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(fields.len(), 3, "{line}");
            assert!(
                range.contains(&fields[1]) && fields[1] != 0 && fields[2] == 1,
                "uid_map line {line:?}"
            );
        }
    }
    assert_unaffected(&server, &honest).await;
}

// ---------------------------------------------------------------------------------------------
// Kernel counts: what the kernel keeps per user, outside any cgroup

/// Waits until the job `id` reports `message` as its progress (it has taken what it wanted and
/// holds it); false if it ends first or never does.
async fn reports(server: &Server, id: &str, message: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
        if job["progress"]["message"] == message {
            return job["status"] == "running";
        }
        if crate::util::is_terminal(&job["status"]) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// How many signals the host's probe queues at most: more than the usual `RLIMIT_SIGPENDING`.
const MOST_SIGNALS_QUEUED: u64 = 1 << 20;

/// What a root process on the host gets of each per-user count while a job holds all it can:
/// an inotify instance with a watch, a fanotify group with a mark, as many queued real-time
/// signals as it can queue (their number), a POSIX message queue. On a thread of its own, which
/// alone blocks the signal it queues itself, and takes them all back.
fn host_allowances() -> Vec<(&'static str, std::io::Result<u64>)> {
    fn check(rc: libc::c_long) -> std::io::Result<libc::c_long> {
        match rc {
            0.. => Ok(rc),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
    std::thread::spawn(|| {
        let mut got = Vec::new();
        // SAFETY: plain system calls on descriptors this thread opens and closes, and on a
        // signal set and siginfo of its own stack.
        unsafe {
            let inotify = check(libc::inotify_init1(libc::IN_CLOEXEC).into()).and_then(|fd| {
                let watch = libc::inotify_add_watch(fd as i32, c"/usr/bin".as_ptr(), libc::IN_OPEN);
                libc::close(fd as i32);
                check(watch.into())
            });
            got.push(("inotify", inotify.map(|_| 1)));
            // FAN_REPORT_FID | FAN_CLOEXEC; an inode mark for FAN_OPEN.
            let fanotify = check(libc::fanotify_init(0x201, libc::O_RDONLY as u32).into())
                .and_then(|fd| {
                    let mark = libc::fanotify_mark(
                        fd as i32,
                        libc::FAN_MARK_ADD,
                        libc::FAN_OPEN,
                        libc::AT_FDCWD,
                        c"/usr/bin".as_ptr(),
                    );
                    libc::close(fd as i32);
                    check(mark.into())
                });
            got.push(("fanotify", fanotify.map(|_| 1)));
            let signal = libc::SIGRTMIN() + 1;
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let mut info: libc::siginfo_t = std::mem::zeroed();
            info.si_signo = signal;
            info.si_code = -1; // SI_QUEUE
            // Probes of tests running at once would share root's count: one at a time.
            static QUEUEING: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _alone = QUEUEING.lock().unwrap_or_else(|e| e.into_inner());
            let mut queued = 0u64;
            let stopped = loop {
                if queued > MOST_SIGNALS_QUEUED {
                    break std::io::Error::other("queued enough");
                }
                let rc = libc::syscall(
                    libc::SYS_rt_tgsigqueueinfo,
                    libc::getpid(),
                    libc::gettid(),
                    signal,
                    &raw const info,
                );
                match check(rc) {
                    Ok(_) => queued += 1,
                    Err(e) => break e,
                }
            };
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            while libc::sigtimedwait(&set, std::ptr::null_mut(), &now) == signal {}
            got.push((
                "signals",
                match queued {
                    0 => Err(stopped),
                    _ => Ok(queued),
                },
            ));
            let name = std::ffi::CString::new(format!("/{}", unique("kiln-probe"))).unwrap();
            let queue = check(libc::mq_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600 as libc::mode_t,
                std::ptr::null::<libc::mq_attr>(),
            ) as libc::c_long);
            if let Ok(queue) = queue {
                libc::mq_close(queue as libc::mqd_t);
                libc::mq_unlink(name.as_ptr());
            }
            got.push(("message_queue", queue.map(|_| 1)));
        }
        got
    })
    .join()
    .expect("the probing thread")
}

/// Takes as much of every per-user count as it can get — inotify instances and watches, fanotify
/// groups and marks, queued signals, message queues, locked shared memory — prints how many of
/// each it got and the errno that stopped it, tries to raise its priority, and holds it all for
/// a few seconds.
const HOARD: &str = "\
import ctypes, errno, itertools, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
def take(label, make, most):
    n = 0
    ctypes.set_errno(0)
    while n < most and make() >= 0:
        n += 1
    print(label, n, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()), flush=True)
take('inotify', lambda: libc.inotify_init1(0), 1000)
take('fanotify', lambda: libc.fanotify_init(0x200, 0), 1000)
watcher = libc.inotify_init1(0)
marker = libc.fanotify_init(0x200, 0)
paths = (os.path.join(d, f).encode() for d, _, fs in os.walk('/usr') for f in fs)
take('watches', lambda: libc.inotify_add_watch(watcher, next(paths, b'/'), 0x20), 100000)
take('marks', lambda: libc.fanotify_mark(marker, 1, ctypes.c_uint64(0x20), -100, next(paths, b'/')), 100000)
sig = signal.SIGRTMIN + 1
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
pid = os.getpid()
take('signals', lambda: libc.sigqueue(pid, sig, None), 1000000)
names = itertools.count()
take('queues', lambda: libc.mq_open(b'/kiln-%d' % next(names), os.O_CREAT | os.O_RDWR, 0o600, None), 1000)
def lock():
    segment = libc.shmget(0, ctypes.c_size_t(1 << 20), 0o1600)
    return libc.shmctl(segment, 11, None) if segment >= 0 else -1
take('locked_mib', lock, 64)
for label, raise_priority in [('realtime', lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))),
                              ('nice', lambda: os.nice(-1))]:
    try:
        raise_priority()
        print(label, 'raised', flush=True)
    except OSError as e:
        print(label, errno.errorcode[e.errno], flush=True)
os.write(3, b'50 holding\\n')
time.sleep(6)
";

/// Another job's share of the same counts, taken while the hoarder holds everything it could.
const NEIGHBOUR: &str = "\
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
def probe(label, r):
    print(label, 'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno()), flush=True)
sig = signal.SIGRTMIN + 1
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
probe('signal', libc.sigqueue(os.getpid(), sig, None))
probe('queue', libc.mq_open(b'/kiln-neighbour', os.O_CREAT | os.O_RDWR, 0o600, None))
segment = libc.shmget(0, ctypes.c_size_t(1 << 20), 0o1600)
probe('locked', libc.shmctl(segment, 11, None) if segment >= 0 else -1)
";

/// `NS_GET_OWNER_UID`: the uid that created a user namespace, as the caller's namespace sees it.
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;

at_both_levels!(a_job_hoarding_per_user_kernel_counts_leaves_the_host_and_other_jobs_theirs);
/// D1 of issue 13: the kernel charges a user namespace's per-user counts to the uid that created
/// it as well, so sandboxes made by the server as root spent root's allowances: one job holding
/// 128 inotify instances left the host's root with EMFILE, and the same for signals, message
/// queues and locked memory. Each sandbox's namespace is now its job's own host uid's, and what a
/// job hoards is that uid's alone: a root process on the host (this test) and a job beside it
/// still get every count, and the honest job finishes untouched.
async fn a_job_hoarding_per_user_kernel_counts_leaves_the_host_and_other_jobs_theirs(level: Level) {
    let server = level.start(&["--workers", "3"]).await;
    let honest = start_honest(&server).await;
    let hoarder_id = server
        .submit(python(HOARD, json!({"wall_ms": 30_000})))
        .await;
    assert!(
        reports(&server, &hoarder_id, "holding").await,
        "the hoarder never held: {}",
        show(&server.finished(&hoarder_id).await)
    );
    let host = host_allowances();
    let neighbour = server
        .submit(python(NEIGHBOUR, json!({"wall_ms": 10_000})))
        .await;
    let neighbour = server.finished(&neighbour).await;
    if level == Level::Full {
        // Every job process's user namespace was created by its own host uid.
        for pid in job_processes(server.job_uids()) {
            let (Some(status), Ok(ns)) = (
                proc_status(pid),
                std::fs::File::open(format!("/proc/{pid}/ns/user")),
            ) else {
                continue;
            };
            let mut owner: libc::uid_t = 0;
            // SAFETY: the ioctl writes one uid into `owner`.
            let rc = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&ns),
                    NS_GET_OWNER_UID,
                    &mut owner,
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            let uid = status["Uid"].split_whitespace().next().unwrap_or("");
            assert_eq!(owner.to_string(), uid, "process {pid}'s namespace owner");
        }
    }
    let hoarder = server.finished(&hoarder_id).await;
    assert_valid_history(&server.events(&hoarder_id).await);
    assert_eq!(hoarder["status"], "succeeded", "{}", show(&hoarder));
    let took: std::collections::BTreeMap<String, String> =
        probe_lines(&hoarder).into_iter().collect();
    let number = |count: &str| -> u64 {
        took[count]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for (count, got) in &host {
        assert!(
            got.is_ok(),
            "the host's root got no {count} ({got:?}) while a job held: {}",
            show(&hoarder)
        );
    }
    // The signals the job held were not the host's root's: it could still queue more than its
    // limit less those.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_SIGPENDING, &mut limit) },
        0
    );
    let root_queued = host
        .iter()
        .find_map(|(count, got)| (*count == "signals").then(|| *got.as_ref().unwrap_or(&0)))
        .unwrap_or(0);
    assert!(
        limit.rlim_cur > MOST_SIGNALS_QUEUED || root_queued + number("signals") > limit.rlim_cur,
        "the host's root queued {root_queued} of {} signals beside {}",
        limit.rlim_cur,
        show(&hoarder)
    );
    // Watching is refused outright (see the shared binds' test below); the rest is the job's
    // own allowance, which it did take. Landlock refuses message queues (a queue is a file
    // made outside the writable directories) where the kernel has it.
    for watching in ["inotify", "fanotify", "watches", "marks"] {
        assert_eq!(took[watching], "0 EPERM", "{}", show(&hoarder));
    }
    // Nor does it get the CPU before everyone else.
    for priority in ["realtime", "nice"] {
        assert_eq!(took[priority], "EPERM", "{}", show(&hoarder));
    }
    for owned in ["signals", "locked_mib"] {
        assert!(number(owned) > 0, "{owned}: {}", show(&hoarder));
    }
    let queues = match took["queues"].as_str() {
        "0 EACCES" => "EACCES",
        _ => "ok",
    };
    assert_eq!(neighbour["status"], "succeeded", "{}", show(&neighbour));
    assert_eq!(
        stdout(&neighbour),
        format!("signal ok\nqueue {queues}\nlocked ok\n"),
        "the neighbour, beside {}",
        show(&hoarder)
    );
    assert_unaffected(&server, &honest).await;
}

at_both_levels!(a_job_cannot_watch_the_shared_binds_for_what_other_jobs_and_the_host_open);
/// L1 of issue 13: `/usr`, `/lib` and `/etc` are bound from the host's own inodes, so an inotify
/// watch (or a fanotify mark) on `/usr/bin` showed a spy every program another tenant's job or
/// the host started. Both are refused from their first call; while the spy would be watching,
/// the host and another job open files there, and it sees nothing.
async fn a_job_cannot_watch_the_shared_binds_for_what_other_jobs_and_the_host_open(level: Level) {
    let server = level.start(&["--workers", "3"]).await;
    let honest = start_honest(&server).await;
    let spy = "\
import ctypes, errno, os, platform, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(label, f):
    ctypes.set_errno(0)
    r = f()
    print(label, r, errno.errorcode.get(ctypes.get_errno(), 'OK') if r < 0 else 'OK', flush=True)
    return r
fds = []
for label, make in [('inotify_init1', lambda: libc.inotify_init1(os.O_NONBLOCK)),
                    ('fanotify_init_fid', lambda: libc.fanotify_init(0x202, 0)),
                    ('fanotify_init_notif', lambda: libc.fanotify_init(0x2, 0))]:
    fd = call(label, make)
    fds.append(fd)
if platform.machine() == 'x86_64':
    call('inotify_init', lambda: libc.syscall(ctypes.c_long(253)))
for path in [b'/usr/bin', b'/usr/lib', b'/etc', b'/bin']:
    name = path.decode().replace('/', '_')
    call('inotify_add_watch' + name, lambda: libc.inotify_add_watch(fds[0], path, 0x21))
    for fd, kind in [(fds[1], 'fid'), (fds[2], 'notif')]:
        call(f'fanotify_mark_{kind}' + name,
             lambda: libc.fanotify_mark(fd, 1, ctypes.c_uint64(0x20 | 0x08000000), -100, path))
os.write(3, b'50 watching\\n')
time.sleep(3)
seen = 0
for fd in fds:
    if fd >= 0:
        try:
            seen += len(os.read(fd, 65536))
        except BlockingIOError:
            pass
print('events', seen)
";
    let id = server.submit(python(spy, json!({"wall_ms": 20_000}))).await;
    assert!(
        reports(&server, &id, "watching").await,
        "the spy never got to watch: {}",
        show(&server.finished(&id).await)
    );
    // What the spy would have seen: the host and another job opening programs there.
    std::fs::read("/usr/bin/env").expect("read /usr/bin/env");
    let other = server
        .submit(sh(
            "ls /usr/bin /usr/lib >/dev/null; cat /usr/bin/env /etc/hosts >/dev/null",
            json!({"wall_ms": 10_000}),
        ))
        .await;
    let other = server.finished(&other).await;
    assert_eq!(other["status"], "succeeded", "{}", show(&other));
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let lines = probe_lines(&job);
    assert_eq!(
        lines.len(),
        3 + 12 + usize::from(cfg!(target_arch = "x86_64")) + 1
    );
    for (name, result) in &lines {
        let want = if name == "events" { "0" } else { "-1 EPERM" };
        assert_eq!(result, want, "{name}: {}", show(&job));
    }
    assert_unaffected(&server, &honest).await;
}

// ---------------------------------------------------------------------------------------------
// Native code (the `c` runtime, where the host has a compiler)

/// Whether the server offers the `c` runtime; a skip of `test` when it does not.
async fn offers_c(server: &Server, test: &str) -> bool {
    let (_, body) = server.get("/v1/runtimes").await;
    let offered = body["runtimes"]
        .as_array()
        .is_some_and(|all| all.iter().any(|r| r["name"] == "c"));
    if !offered {
        skip(test, "the server offers no c runtime (no /usr/bin/gcc)");
    }
    offered
}

fn c(code: &str, args: &[&str], limits: Value) -> Value {
    json!({"runtime": "c", "code": code, "args": args, "limits": limits})
}

// Both other ABIs are x86-64's own: elsewhere there is nothing to check.
#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn system_calls_through_another_abi_kill_the_process() {
    let server = Server::start().await;
    if !offers_c(&server, "system_calls_through_another_abi_kill_the_process").await {
        return;
    }
    // The x32 bit would make every check by system call number miss; int 0x80 enters the
    // i386 table, whose numbers mean other calls.
    let code = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("start\n");
    long r;
    if (strcmp(argv[1], "x32") == 0) {
        r = syscall(0x40000000L | SYS_getpid);
    } else {
        __asm__ volatile ("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    }
    printf("%s returned %ld\n", argv[1], r);
    return 0;
}
"#;
    let honest = start_honest(&server).await;
    let x32 = server
        .submit(c(code, &["x32"], json!({"wall_ms": 10_000})))
        .await;
    let int80 = server
        .submit(c(code, &["int80"], json!({"wall_ms": 10_000})))
        .await;
    for (id, signals) in [
        (x32, &[libc::SIGSYS][..]),
        // A kernel without i386 emulation answers int 0x80 with SIGSEGV before seccomp sees it.
        (int80, &[libc::SIGSYS, libc::SIGSEGV][..]),
    ] {
        let job = server.finished(&id).await;
        assert_eq!(job["status"], "failed", "{}", show(&job));
        assert_eq!(job["outcome"], "signal", "{}", show(&job));
        assert!(
            job["signal"]
                .as_i64()
                .is_some_and(|s| signals.iter().any(|&k| i64::from(k) == s)),
            "{}",
            show(&job)
        );
        assert_eq!(stdout(&job), "start\n", "{}", show(&job));
    }
    assert_unaffected(&server, &honest).await;
}

#[tokio::test]
async fn the_compile_step_is_confined_like_the_run() {
    let server = Server::start().await;
    if !offers_c(&server, "the_compile_step_is_confined_like_the_run").await {
        return;
    }
    let honest = start_honest(&server).await;
    // The compiler reads what the code names: host files are not there, and an endless one
    // ends the build at its limits.
    let mut ids = Vec::new();
    for include in [
        "/etc/shadow".to_owned(),
        server.db_path().display().to_string(),
        "/proc/1/environ".to_owned(),
        "/dev/zero".to_owned(),
    ] {
        let code = format!("#include \"{include}\"\nint main(void) {{ return 0; }}\n");
        let id = server
            .submit(c(&code, &[], json!({"wall_ms": 5000, "memory_mb": 64})))
            .await;
        ids.push((include, id));
    }
    for (include, id) in ids {
        let job = server.finished(&id).await;
        assert_eq!(job["status"], "failed", "{include}: {}", show(&job));
        // An endless include ends the build at its memory limit, with that outcome (issue 13).
        let outcome = match include.as_str() {
            "/dev/zero" => "memory_limit",
            _ => "compile_error",
        };
        assert_eq!(job["outcome"], outcome, "{include}: {}", show(&job));
        let stderr = job["stderr"].as_str().unwrap_or("");
        if include != "/dev/zero" {
            assert!(
                stderr.contains("No such file or directory")
                    || stderr.contains("Permission denied"),
                "{include}: {}",
                show(&job)
            );
        }
    }
    assert_unaffected(&server, &honest).await;
}

// ---------------------------------------------------------------------------------------------
// The kernel surface a job reaches (issue 13)

at_both_levels!(newer_and_unknown_system_calls_are_refused_and_the_job_goes_on);
async fn newer_and_unknown_system_calls_are_refused_and_the_job_goes_on(level: Level) {
    let server = level.start(&[]).await;
    // Each named call with arguments that would fail otherwise (EBADF, EFAULT, EINVAL) were it
    // let through, or succeed (`fanotify_init` for an unprivileged group, `memfd_secret`).
    // Numbers above the newest known stand for a newer kernel's calls.
    let code = "\
import ctypes, errno, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fanotify_init = {'x86_64': 300, 'aarch64': 262}[platform.machine()]
def call(label, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    print(label, r, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()), flush=True)
call('open_tree_attr', 467, -1, 0, 0, 0, 0)
call('quotactl_fd', 443, -1, 0, 0, 0)
call('statmount', 457, 0, 0, 0, 0)
call('listmount', 458, 0, 0, 0, 0)
call('memfd_secret', 447, 0)
call('fanotify_init', fanotify_init, 0x200, 0)
call('pidfd_getfd', 438, -1, 0, 0)
for nr in [470, 471, 512, 1000, 0x3fffffff]:
    call(f'unknown_{nr}', nr, 0, 0, 0, 0, 0, 0)
print('after', 0, 'going on')
";
    let job = contained(&server, python(code, json!({"wall_ms": 10_000}))).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let lines = probe_lines(&job);
    assert_eq!(lines.len(), 13, "{}", show(&job));
    for (name, result) in &lines {
        let expected = match name.as_str() {
            "after" => "0 going on",
            unknown if unknown.starts_with("unknown_") => "-1 ENOSYS",
            _ => "-1 EPERM",
        };
        assert_eq!(result, expected, "{name}: {}", show(&job));
    }
}

/// Reads each path given as an argument and prints one JSON object: path → `["READ", text]`,
/// `["LISTED", names]` or `["ERR", errno]`.
const PROC_PROBE: &str = "\
import json, os, sys
def read(p):
    try:
        if os.path.isdir(p):
            return ['LISTED', sorted(os.listdir(p))]
        with open(p, 'rb') as f:
            return ['READ', f.read().decode('latin-1')]
    except OSError as e:
        return ['ERR', e.errno]
print(json.dumps({p: read(p) for p in sys.argv[1:]}))
";

at_both_levels!(proc_tells_a_job_nothing_of_the_host_its_boot_or_the_servers_cgroups);
async fn proc_tells_a_job_nothing_of_the_host_its_boot_or_the_servers_cgroups(level: Level) {
    let server = level.start(&[]).await;
    let masked_files = [
        "kcore",
        "keys",
        "key-users",
        "latency_stats",
        "locks",
        "sched_debug",
        "timer_list",
        "timer_stats",
        "interrupts",
        "kallsyms",
        "modules",
        "partitions",
        "diskstats",
        "swaps",
    ];
    let masked_dirs = ["acpi", "asound", "scsi", "bus", "fs", "irq"];
    let mut paths = vec![
        "/proc/cmdline".to_owned(),
        "/proc/sys/kernel/random/boot_id".to_owned(),
        "/proc/self/cgroup".to_owned(),
        // What programs read of /proc stays.
        "/proc/cpuinfo".to_owned(),
        "/proc/meminfo".to_owned(),
        "/proc/self/status".to_owned(),
    ];
    paths.extend(masked_files.iter().map(|f| format!("/proc/{f}")));
    paths.extend(masked_dirs.iter().map(|d| format!("/proc/{d}")));
    // Something the host has for a job to find: a lock in /proc/locks.
    let held = tempfile::tempfile().expect("a host file to lock");
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_SH) },
        0
    );
    let job = contained(
        &server,
        json!({"runtime": "python", "code": PROC_PROBE, "args": paths, "limits": {"wall_ms": 10_000}}),
    )
    .await;
    drop(held);
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    let seen: Value = serde_json::from_str(stdout(&job).trim()).expect("the probe's JSON");
    let read = |path: &str| -> &str {
        assert_eq!(seen[path][0], "READ", "{path}: {}", seen[path]);
        seen[path][1].as_str().unwrap_or("")
    };

    let host_cmdline = std::fs::read_to_string("/proc/cmdline").expect("host cmdline");
    let host_boot_id =
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("host boot_id");
    assert_eq!(read("/proc/cmdline"), "kiln\n");
    assert_ne!(read("/proc/cmdline"), host_cmdline);
    let boot_id = read("/proc/sys/kernel/random/boot_id");
    assert_eq!(boot_id, "00000000-0000-4000-8000-000000000000\n");
    assert_ne!(boot_id, host_boot_id);
    // Every hierarchy reads as its namespace's root: no `kiln-<pid>-<n>/run-<count>`.
    let cgroup = read("/proc/self/cgroup");
    assert!(!cgroup.is_empty());
    for line in cgroup.lines() {
        assert!(line.ends_with(":/"), "{cgroup}");
    }
    for path in ["/proc/cpuinfo", "/proc/meminfo", "/proc/self/status"] {
        assert!(!read(path).is_empty(), "{path}");
    }
    for file in masked_files {
        let path = format!("/proc/{file}");
        if std::path::Path::new(&path).exists() {
            assert_eq!(read(&path), "", "{path} is not masked");
        }
    }
    for dir in masked_dirs {
        let path = format!("/proc/{dir}");
        if std::path::Path::new(&path).exists() {
            assert_eq!(seen[&path], json!(["LISTED", []]), "{path} is not masked");
        }
    }
}

at_both_levels!(locks_work_on_a_jobs_own_files_and_no_job_sees_anothers_or_the_hosts);
async fn locks_work_on_a_jobs_own_files_and_no_job_sees_anothers_or_the_hosts(level: Level) {
    let server = level.start(&[]).await;
    // An honest user of locks: SQLite (POSIX locks, F_GETLK included), flock and lockf on the
    // job's own files, held while another job looks.
    let holder = "\
import fcntl, sqlite3, time
db = sqlite3.connect('/work/t.db')
db.execute('create table t (x)')
with db:
    db.executemany('insert into t values (?)', [(i,) for i in range(100)])
print('sqlite', db.execute('select sum(x) from t').fetchone()[0], flush=True)
f = open('/tmp/lock', 'w')
fcntl.flock(f, fcntl.LOCK_EX)
g = open('/work/lock', 'w')
fcntl.lockf(g, fcntl.LOCK_EX)
db.execute('begin exclusive')
print('locked', flush=True)
time.sleep(4)
";
    let looker = "\
import time
most = 0
end = time.time() + 2
while time.time() < end:
    with open('/proc/locks') as f:
        most = max(most, len(f.read().splitlines()))
    time.sleep(0.05)
print('seen', most)
";
    let held = tempfile::tempfile().expect("a host file to lock");
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let honest = start_honest(&server).await;
    let holder = server
        .submit(python(holder, json!({"wall_ms": 20_000})))
        .await;
    server.running(&holder).await;
    let looker = server
        .submit(python(looker, json!({"wall_ms": 20_000})))
        .await;
    let looked = server.finished(&looker).await;
    let held_job = server.finished(&holder).await;
    drop(held);
    assert_eq!(held_job["status"], "succeeded", "{}", show(&held_job));
    assert_eq!(
        stdout(&held_job),
        "sqlite 4950\nlocked\n",
        "{}",
        show(&held_job)
    );
    assert_eq!(looked["status"], "succeeded", "{}", show(&looked));
    assert_eq!(stdout(&looked), "seen 0\n", "{}", show(&looked));
    assert_unaffected(&server, &honest).await;
}

// ---------------------------------------------------------------------------------------------
// Memory charged to the run
//
// What a run holds before its program starts is memory too: its files and a compiled binary
// (its `/work` is a tmpfs), and what its execve copies. All of it counts against the run's
// memory limit, however it got there.

/// `bytes` of files, in pieces of at most 4 MiB.
fn files_of(bytes: usize) -> Value {
    let mut files = serde_json::Map::new();
    let mut left = bytes;
    while left > 0 {
        let piece = left.min(4 << 20);
        files.insert(
            format!("data{}", files.len()),
            Value::String("x".repeat(piece)),
        );
        left -= piece;
    }
    Value::Object(files)
}

#[tokio::test]
async fn files_the_memory_limit_cannot_hold_are_refused_at_submit_or_end_with_the_memory_limit() {
    let server = Server::start().await;
    let honest = start_honest(&server).await;
    let (status, body) = server
        .post(
            "/v1/jobs",
            &json!({"runtime": "sh", "code": "true", "files": files_of(2 << 20),
                "limits": {"memory_mb": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    // Within the limit by the bytes submitted, not with the pages and inodes they take.
    let id = server
        .submit(
            json!({"runtime": "sh", "code": "echo ran", "files": files_of((1 << 20) - 64),
            "limits": {"memory_mb": 1}}),
        )
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "failed", "{}", show(&job));
    assert_eq!(job["outcome"], "memory_limit", "{}", show(&job));
    assert_eq!(stdout(&job), "", "{}", show(&job));
    assert_eq!(
        job["attempt"],
        1,
        "refused once, never retried: {}",
        show(&job)
    );
    assert_unaffected(&server, &honest).await;
}

#[tokio::test]
async fn the_files_of_a_run_count_against_its_memory_limit_and_show_in_its_memory_kb() {
    let server = Server::start().await;
    let honest = start_honest(&server).await;
    // Fits 48 MiB alone (with the interpreter), not beside 15 MiB of files.
    let code = "data = b'x' * (36 << 20)\nprint(len(data) >> 20)\n";
    let limits = json!({"memory_mb": 48, "wall_ms": 20_000});
    let alone = server.submit(python(code, limits.clone())).await;
    let mut with_files = python(code, limits);
    with_files["files"] = files_of(15 << 20);
    let with_files = server.submit(with_files).await;
    let mut idle = sh("true", json!({}));
    idle["files"] = files_of(12 << 20);
    let idle = server.submit(idle).await;

    let job = server.finished(&alone).await;
    assert_eq!(job["status"], "succeeded", "alone: {}", show(&job));
    assert_eq!(stdout(&job), "36\n", "alone: {}", show(&job));
    let job = server.finished(&with_files).await;
    assert_eq!(job["status"], "failed", "with files: {}", show(&job));
    assert_eq!(job["outcome"], "memory_limit", "with files: {}", show(&job));
    let job = server.finished(&idle).await;
    assert_eq!(job["status"], "succeeded", "idle: {}", show(&job));
    assert!(
        job["memory_kb"].as_u64().is_some_and(|kb| kb >= 12 << 10),
        "the files are the run's memory: {}",
        show(&job)
    );
    assert_unaffected(&server, &honest).await;
}

#[tokio::test]
async fn arguments_a_run_cannot_hold_are_refused_at_submit_and_the_most_allowed_run_in_the_least_memory()
 {
    let server = Server::start().await;
    // The job's execve copies its arguments into the run's memory while its process still
    // shares the server's (a vfork child of init, which the OOM killer never picks): 1.6 MB of
    // them under 1 MiB once ended `memory_limit` there. They are refused at submit now, and the
    // most a job may pass fit the smallest memory limit.
    let too_many: Vec<String> = (0..16).map(|_| "x".repeat(100_000)).collect();
    let (status, body) = server
        .post(
            "/v1/jobs",
            &json!({"runtime": "sh", "code": "echo $#", "args": too_many,
                "limits": {"memory_mb": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let most: Vec<String> = (0..6).map(|_| "x".repeat(10_000)).collect();
    let job = contained(
        &server,
        json!({"runtime": "sh", "code": "echo $#", "args": most, "limits": {"memory_mb": 1}}),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    assert_eq!(stdout(&job), "6\n", "{}", show(&job));
}

#[tokio::test]
async fn a_binary_holding_more_than_the_memory_limit_ends_with_the_memory_limit() {
    let server = Server::start().await;
    let test = "a_binary_holding_more_than_the_memory_limit_ends_with_the_memory_limit";
    if !offers_c(&server, test).await {
        return;
    }
    // Initialised data is in the binary, so in the run's `/work` before the program starts.
    let program = |mib: u32| {
        format!(
            "#include <stdio.h>\nstatic char big[{mib} << 20] = {{1}};\n\
             int main(void) {{ big[4096] = 2; printf(\"%d\\n\", big[0] + big[4096]); return 0; }}\n"
        )
    };
    let limits = json!({"memory_mb": 64, "wall_ms": 30_000});
    let honest = start_honest(&server).await;
    let hostile = server.submit(c(&program(200), &[], limits.clone())).await;
    let fitting = server.submit(c(&program(16), &[], limits)).await;
    let job = server.finished(&hostile).await;
    assert_eq!(job["status"], "failed", "{}", show(&job));
    assert_eq!(job["outcome"], "memory_limit", "{}", show(&job));
    assert_eq!(stdout(&job), "", "{}", show(&job));
    let job = server.finished(&fitting).await;
    assert_eq!(job["status"], "succeeded", "{}", show(&job));
    assert_eq!(stdout(&job), "3\n", "{}", show(&job));
    assert!(
        job["memory_kb"].as_u64().is_some_and(|kb| kb >= 16 << 10),
        "the binary is the run's memory: {}",
        show(&job)
    );
    assert_unaffected(&server, &honest).await;
}

/// The self-including header of issue 13: 2^190 inclusions.
const SELF_INCLUDE: &str =
    "#if __INCLUDE_LEVEL__ < 190\n#include \"a.h\"\n#include \"a.h\"\n#endif\n";

/// A string of 64 MiB from 2 M tokens: the compiler needs about 600 MB for it.
fn macro_bomb() -> String {
    let mut code = String::from("#define A0 \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n");
    for level in 1..8 {
        let previous = format!("A{} ", level - 1).repeat(8);
        code.push_str(&format!("#define A{level} {previous}\n"));
    }
    code + "const char *s = A7;\nint main(void) { return s[0]; }\n"
}

#[tokio::test]
async fn the_compile_step_stays_within_the_operators_caps_and_ends_with_the_limit_it_reached() {
    let server = Server::start_with(&["--max-wall-ms", "5000", "--max-cpu-ms", "2000"]).await;
    let test =
        "the_compile_step_stays_within_the_operators_caps_and_ends_with_the_limit_it_reached";
    if !offers_c(&server, test).await {
        return;
    }
    let honest = server
        .submit(python(HONEST, json!({"wall_ms": 5000, "cpu_ms": 2000})))
        .await;
    server.running(&honest).await;
    let limits = json!({"wall_ms": 1000, "cpu_ms": 1000, "memory_mb": 64});
    let mut endless = c(
        "#include \"a.h\"\nint main(void) { return 0; }\n",
        &[],
        limits.clone(),
    );
    endless["files"] = json!({"a.h": SELF_INCLUDE});
    let endless = server.submit(endless).await;
    let job = server.finished(&endless).await;
    assert_eq!(job["status"], "timed_out", "{}", show(&job));
    assert!(
        ["cpu_time_limit", "wall_time_limit"].contains(&job["outcome"].as_str().unwrap_or("")),
        "{}",
        show(&job)
    );
    // Held to the caps, not to the 30 s a build gets where nothing caps it.
    assert!(
        job["wall_ms"].as_u64().is_some_and(|ms| ms < 5000 + 1500),
        "{}",
        show(&job)
    );
    assert_unaffected(&server, &honest).await;
}

#[tokio::test]
async fn a_build_killed_for_memory_ends_with_the_memory_limit_under_a_capped_server() {
    let server = Server::start_with(&["--max-memory-mb", "128"]).await;
    if !offers_c(
        &server,
        "a_build_killed_for_memory_ends_with_the_memory_limit_under_a_capped_server",
    )
    .await
    {
        return;
    }
    let job = contained(
        &server,
        c(
            &macro_bomb(),
            &[],
            json!({"memory_mb": 64, "wall_ms": 30_000}),
        ),
    )
    .await;
    assert_eq!(job["status"], "failed", "{}", show(&job));
    assert_eq!(job["outcome"], "memory_limit", "{}", show(&job));
    assert!(
        job["memory_kb"]
            .as_u64()
            .is_some_and(|kb| kb <= (128 + 8) * 1024),
        "{}",
        show(&job)
    );
}
