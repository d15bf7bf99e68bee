//! Live streams and the server's memory: the commit→SSE row (4) and row 6 of the benchmark
//! issue.
//!
//! - **commit→SSE latency**, p50 and p99 over every (event, subscriber) pair, with 1,000
//!   concurrent Server-Sent Events subscribers of `GET /v1/events`: one job is submitted at a
//!   time to the release server (`--workers 0`: only the commit happens) and each subscriber
//!   notes when the job's `job.queued` message arrives, measured from the submitter receiving its
//!   `202` (sent right after the commit, as the stream's notice is).
//!   Limit: **bare loopback fan-out**: a minimal server (this binary re-run as a child, two
//!   threads, blocking writes) writes a message of the same size to the same 1,000 subscriber
//!   sockets, read by the same client code; measured from the trigger. What 1,000 sockets on
//!   this machine cost with no HTTP, no database and no per-stream task.
//! - **server RSS** idle, with 100,000 jobs queued (submitted over HTTP by 64 clients to a fresh
//!   server with `--workers 0`), and with the 1,000 subscribers connected, and its growth per
//!   subscriber. No limit: the figures to watch between versions.
//!
//! Each run starts fresh servers; the figures are the median of `KILN_BENCH_RUNS` (3) runs. Rows
//! go to `target/bench-streams.json` (see `benches/report`).

mod common;
mod latency;
mod report;
mod server;

use latency::Percentiles;
use report::{Better, Goal, Row};
use server::{Server, scratch};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const SUBSCRIBERS: usize = 1000;
/// Events measured per run, each delivered to every subscriber.
const ROUNDS: usize = 100;
/// Events sent first and not measured (connections and caches warm up).
const WARMUP: usize = 10;
const SUBMIT_BODY: &str = r#"{"runtime":"sh","code":"true"}"#;
/// Jobs queued for the memory figure.
const QUEUED: usize = 100_000;
/// What every subscriber looks for, in kiln's stream and in the fan-out's.
const MARKER: &[u8] = b"event: job.queued\n";
const FANOUT_ENV: &str = "KILN_BENCH_FANOUT";

fn main() {
    if std::env::var_os(FANOUT_ENV).is_some() {
        return fanout_server();
    }
    raise_open_files_limit();
    let runs = report::runs();
    let queued = report::size(QUEUED);
    let runtime = Runtime::new().expect("tokio runtime");
    println!("kiln streams bench: {runs} runs, {SUBSCRIBERS} subscribers, {ROUNDS} events each");
    let (mut kiln, mut limit) = (Vec::new(), Vec::new());
    let (mut idle_rss, mut queued_rss, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let measured = runtime.block_on(kiln_run());
        let bare = runtime.block_on(fanout_run());
        let with_queue = runtime.block_on(queued_rss_kib(queued));
        println!(
            "run {run}: commit->SSE p50 {:.2} ms, p99 {:.2} ms; bare fan-out p50 {:.2} ms, p99 \
             {:.2} ms; RSS {:.1} MiB idle, {:.1} MiB with {queued} queued, {:.1} MiB with \
             {SUBSCRIBERS} subscribers",
            measured.from_commit.p50,
            measured.from_commit.p99,
            bare.p50,
            bare.p99,
            measured.idle_rss_kib / 1024.0,
            with_queue / 1024.0,
            measured.rss_kib / 1024.0,
        );
        kiln.push(measured.from_commit);
        limit.push(bare);
        idle_rss.push(measured.idle_rss_kib / 1024.0);
        queued_rss.push(with_queue / 1024.0);
        rss.push(measured.rss_kib / 1024.0);
    }
    let p50 = |runs: &[Percentiles]| runs.iter().map(|p| p.p50).collect::<Vec<_>>();
    let p99 = |runs: &[Percentiles]| runs.iter().map(|p| p.p99).collect::<Vec<_>>();
    let fan_out = format!(
        "bare loopback fan-out to the same {} sockets",
        report::number(SUBSCRIBERS as f64)
    );
    let per_subscriber = rss
        .iter()
        .zip(&idle_rss)
        .map(|(with, idle)| (with - idle) * 1024.0 / SUBSCRIBERS as f64)
        .collect();
    let rows = vec![
        Row::measured(
            4,
            "commit→SSE p50, 1,000 subscribers of `GET /v1/events`",
            "ms",
            p50(&kiln),
            Better::Lower,
            Some((fan_out.clone(), p50(&limit))),
            Goal::None,
        ),
        Row::measured(
            4,
            "commit→SSE p99, 1,000 subscribers of `GET /v1/events`",
            "ms",
            p99(&kiln),
            Better::Lower,
            Some((fan_out, p99(&limit))),
            Goal::None,
        ),
        Row::plain(6, "server RSS idle", "MiB", idle_rss),
        Row::plain(
            6,
            format!(
                "server RSS with {} jobs queued",
                report::number(queued as f64)
            ),
            "MiB",
            queued_rss,
        ),
        Row::plain(
            6,
            format!(
                "server RSS with {} SSE subscribers",
                report::number(SUBSCRIBERS as f64)
            ),
            "MiB",
            rss,
        ),
        Row::plain(6, "server RSS per SSE subscriber", "KiB", per_subscriber),
    ];
    report::write("streams", &rows);
}

/// The resident memory of a fresh server once `jobs` jobs are queued in it, KiB.
async fn queued_rss_kib(jobs: usize) -> f64 {
    let dir = scratch();
    let server = Server::start_in(dir.path(), &["--workers", "0"]);
    server::submit_many(&server.url, SUBMIT_BODY, jobs).await;
    server.rss_kib()
}

/// 1,000 subscribers and both server processes need more descriptors than the usual 1,024.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a live struct; the child servers inherit the limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Milliseconds from `from` to `to`, negative if `to` came first.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(after) => after.as_secs_f64() * 1000.0,
        None => -(from.duration_since(to).as_secs_f64() * 1000.0),
    }
}

struct KilnRun {
    from_commit: Percentiles,
    idle_rss_kib: f64,
    rss_kib: f64,
}

async fn kiln_run() -> KilnRun {
    let dir = scratch();
    let server = Server::start_in(dir.path(), &["--workers", "0"]);
    let addr = server
        .url
        .strip_prefix("http://")
        .expect("an http URL")
        .to_owned();
    let idle_rss_kib = server.rss_kib();
    let request =
        "GET /v1/events HTTP/1.1\r\nHost: kiln\r\nAccept: text/event-stream\r\n\r\n".to_owned();
    let receipts = subscribe(&addr, Some(request)).await;

    let client = reqwest::Client::new();
    let mut from_commit = Vec::new();
    let mut receipts = receipts;
    for round in 0..WARMUP + ROUNDS {
        let answer = client
            .post(format!("http://{addr}/v1/jobs"))
            .header("content-type", "application/json")
            .body(SUBMIT_BODY)
            .send()
            .await
            .expect("submit");
        let committed = Instant::now();
        assert_eq!(answer.status(), 202);
        let arrived = collect(&mut receipts).await;
        if round >= WARMUP {
            from_commit.extend(arrived.iter().map(|&at| signed_ms(committed, at)));
        }
    }
    // With every subscriber still connected, after the streams have carried traffic.
    let rss_kib = server.rss_kib();
    drop(server);
    KilnRun {
        from_commit: Percentiles::of(from_commit),
        idle_rss_kib,
        rss_kib,
    }
}

/// The limit: the same subscribers fed by the minimal fan-out server.
async fn fanout_run() -> Percentiles {
    let mut child = Command::new(std::env::current_exe().expect("this bench binary"))
        .env(FANOUT_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fan-out server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("the fan-out's address");
    let addr = line.trim().to_owned();
    let mut control = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("control connection");
    let mut receipts = subscribe(&addr, None).await;
    let mut latencies = Vec::new();
    for round in 0..WARMUP + ROUNDS {
        let triggered = Instant::now();
        control.write_all(b"!").await.expect("trigger");
        let arrived = collect(&mut receipts).await;
        if round >= WARMUP {
            latencies.extend(arrived.iter().map(|&at| signed_ms(triggered, at)));
        }
    }
    drop(control);
    let _ = child.wait();
    Percentiles::of(latencies)
}

/// Connects every subscriber (sending `request` first, if any, and waiting for the answer's
/// headers); each reports the instant it sees [`MARKER`].
async fn subscribe(addr: &str, request: Option<String>) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    for _ in 0..SUBSCRIBERS {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect a subscriber");
        stream.set_nodelay(true).expect("nodelay");
        let (tx, ready_tx, request) = (tx.clone(), ready_tx.clone(), request.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            let mut carried = 0;
            if let Some(request) = request {
                stream.write_all(request.as_bytes()).await.expect("request");
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buffer).await.expect("headers");
                    assert!(n > 0, "the server closed a subscriber");
                    head.extend_from_slice(&buffer[..n]);
                }
                assert!(head.starts_with(b"HTTP/1.1 200"), "not accepted");
            }
            let _ = ready_tx.send(());
            loop {
                let Ok(n @ 1..) = stream.read(&mut buffer[carried..]).await else {
                    return;
                };
                let at = Instant::now();
                let end = carried + n;
                let seen = buffer[..end]
                    .windows(MARKER.len())
                    .filter(|w| *w == MARKER)
                    .count();
                for _ in 0..seen {
                    let _ = tx.send(at);
                }
                // Keep a tail shorter than the marker: a marker split between reads is found
                // next time, and none is counted twice.
                let keep = (MARKER.len() - 1).min(end);
                buffer.copy_within(end - keep..end, 0);
                carried = keep;
            }
        });
    }
    for _ in 0..SUBSCRIBERS {
        ready.recv().await.expect("a subscriber connected");
    }
    rx
}

/// One receipt per subscriber.
async fn collect(receipts: &mut mpsc::UnboundedReceiver<Instant>) -> Vec<Instant> {
    let mut arrived = Vec::with_capacity(SUBSCRIBERS);
    while arrived.len() < SUBSCRIBERS {
        let at = tokio::time::timeout(Duration::from_secs(30), receipts.recv())
            .await
            .expect("every subscriber got the event within 30 s")
            .expect("subscribers alive");
        arrived.push(at);
    }
    arrived
}

/// The fan-out server (this binary with [`FANOUT_ENV`] set): accepts a control connection, then
/// [`SUBSCRIBERS`] more; on each byte from the control connection, two threads each write one
/// message to half of the subscribers. Exits when the control connection closes.
fn fanout_server() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("address"));
    std::io::stdout().flush().expect("flush");
    let (mut control, _) = listener.accept().expect("control connection");
    let mut sockets: Vec<TcpStream> = (0..SUBSCRIBERS)
        .map(|_| {
            let (socket, _) = listener.accept().expect("a subscriber");
            socket.set_nodelay(true).expect("nodelay");
            socket
        })
        .collect();
    let frame = format!(
        "id: 1\n{}data: {}\n\n",
        std::str::from_utf8(MARKER).expect("ASCII"),
        "x".repeat(200)
    );
    let half = sockets.split_off(SUBSCRIBERS / 2);
    let go = Arc::new(Barrier::new(3));
    let done = Arc::new(Barrier::new(3));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = [sockets, half]
        .into_iter()
        .map(|mut sockets| {
            let (go, done, stop, frame) = (go.clone(), done.clone(), stop.clone(), frame.clone());
            std::thread::spawn(move || {
                loop {
                    go.wait();
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    for socket in &mut sockets {
                        socket.write_all(frame.as_bytes()).expect("fan out");
                    }
                    done.wait();
                }
            })
        })
        .collect();
    let mut byte = [0u8; 1];
    while matches!(control.read(&mut byte), Ok(1)) {
        go.wait();
        done.wait();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    go.wait();
    for writer in writers {
        let _ = writer.join();
    }
}
