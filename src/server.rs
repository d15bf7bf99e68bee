//! Wires the parts into a running service and takes it down again in order.
//!
//! Start: take the listening address, check that the sandbox can run a job, say which other
//! servers share the work root or sandbox uids, open the store (migrations), rescue the jobs an
//! earlier incarnation of this node left running, start the workers, the rescuer and the webhook
//! deliverer, then accept HTTP. Stop, in two stages: stop accepting and claiming; let running
//! jobs finish within the grace period; kill and requeue what is left (with its events); stop
//! delivering webhooks (what is pending stays in the outbox); then let the writer drain and
//! close the database.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Guard;
use crate::config::Config;
use crate::http;
use crate::job::CallbackShape;
use crate::live::Live;
use crate::neighbours;
use crate::runner::{Isolation, Runner};
use crate::runtime::{RuntimeError, Runtimes};
use crate::sandbox::{Mode, Sandbox, SandboxError, UID_RANGE};
use crate::store::postgres::Wakeups;
use crate::store::{Store, StoreError, WriterThread};
use crate::webhook::{Deliverer, WebhookError};
use crate::worker::{Running, Stopping, Workers};

/// How long shutdown waits for the writer to commit what is pending and close the file.
const WRITER_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the database {db}: {source}")]
    Store { db: String, source: StoreError },
    #[error("cannot prepare the work directory {path}: {source}")]
    WorkRoot {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}{hint}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("no runtime is available on this host (kiln doctor says what each one lacks)")]
    NoRuntimes,
    #[error("{0}")]
    Runtimes(#[from] RuntimeError),
    #[error("{source}; refusing to run jobs without it: {fix}")]
    Sandbox {
        source: SandboxError,
        fix: &'static str,
    },
    #[error("cannot start webhook delivery: {0}")]
    Webhooks(#[from] WebhookError),
    #[error(
        "refusing to serve {0} without API tokens: anyone who can reach it could run code. \
         Create one with `kiln token create --tenant NAME`, listen on loopback, or pass \
         --insecure"
    )]
    Insecure(std::net::SocketAddr),
}

/// Probes the sandbox with a real sandboxed run, or loudly does without it when the operator
/// said so. Every sandbox also binds what the runtimes offered need (`binds`).
async fn isolation(
    config: &Config,
    binds: Vec<std::path::PathBuf>,
) -> Result<Isolation, ServerError> {
    match config.sandbox.mode {
        Mode::Full | Mode::Namespaces => {
            let refused = |source: SandboxError| ServerError::Sandbox {
                fix: source.fix().unwrap_or(
                    "`kiln doctor` says what this host lacks; --sandbox none turns the sandbox \
                     off, for development only",
                ),
                source,
            };
            let mut sandbox_config = config.sandbox.clone();
            sandbox_config.extra_binds.extend(binds);
            let sandbox = Sandbox::new(&sandbox_config, &config.work_root).map_err(refused)?;
            sandbox.self_test().await.map_err(refused)?;
            tracing::info!(sandbox = %sandbox.report(), "sandbox ready");
            Ok(Isolation::Sandbox(sandbox))
        }
        Mode::None => {
            tracing::warn!(
                "SANDBOX DISABLED (--sandbox none): submitted code runs as a plain subprocess of \
                 this server, with its privileges. Development only: never expose this server."
            );
            Ok(Isolation::None)
        }
    }
}

/// What to do about an address that cannot be had, where kiln can tell.
fn listen_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            ": another process listens there (an earlier kiln serve?); stop it, or give another \
             address with --listen or KILN_LISTEN"
        }
        _ => "",
    }
}

/// Enters this server in the host's register of servers and warns of each live one that shares
/// its work root or sandbox uids. A register that cannot be written is no reason not to serve.
fn announce(config: &Config, addr: std::net::SocketAddr) -> Option<neighbours::Registration> {
    let uids = (config.sandbox.mode != Mode::None).then(|| {
        let first = config.sandbox.uid_base;
        (first, first.saturating_add(UID_RANGE + 1))
    });
    let me = neighbours::Neighbour {
        pid: std::process::id(),
        listen: addr.to_string(),
        work_root: config.work_root.clone(),
        uids,
    };
    let dir = neighbours::default_register();
    match neighbours::register(&dir, &me) {
        Ok((registration, clashes)) => {
            for clash in clashes {
                tracing::warn!("{clash}");
            }
            Some(registration)
        }
        Err(e) => {
            tracing::warn!(
                register = %dir.display(),
                error = %e,
                "cannot check for other kiln servers sharing the work root or sandbox uids"
            );
            None
        }
    }
}

/// Opens the configured database: the SQLite file (with its writer thread, to be joined at the
/// end), or the PostgreSQL database with a connection for each worker and a few for the API.
async fn open_store(config: &Config) -> Result<(Store, Option<WriterThread>), ServerError> {
    let failed = |source| ServerError::Store {
        db: shown_db(config),
        source,
    };
    match &config.postgres {
        Some(postgres) => {
            let wakeups = if postgres.poll_only {
                Wakeups::Poll {
                    every: config.poll_interval,
                }
            } else {
                Wakeups::Notify {
                    poll: config.poll_interval,
                }
            };
            let connections = config.workers + 8;
            let store = Store::connect(&postgres.url, connections, wakeups)
                .await
                .map_err(failed)?;
            Ok((store, None))
        }
        None => {
            let readers = u32::try_from(config.workers + 4).unwrap_or(16);
            let (store, writer) = Store::open(&config.db_path, readers).map_err(failed)?;
            Ok((store, Some(writer)))
        }
    }
}

/// The database as logs and errors name it: the file, or the URL without its password.
fn shown_db(config: &Config) -> String {
    match &config.postgres {
        Some(postgres) => crate::config::without_password(&postgres.url),
        None => config.db_path.display().to_string(),
    }
}

/// Runs the service until `shutdown` resolves, then stops it cleanly. `on_listening` is told the
/// bound address (useful with port 0).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServerError> {
    let config = Arc::new(config);
    // First, before anything is migrated or probed: a port another process holds is the most
    // common reason a start fails, and the quickest to find out.
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                hint: listen_hint(&source),
                source,
            })?;
    let addr = listener.local_addr().map_err(ServerError::Http)?;
    let mut runtimes = Runtimes::load(&config.runtimes)?;
    let isolation = isolation(&config, runtimes.binds()).await?;
    if let Isolation::Sandbox(sandbox) = &isolation {
        runtimes.retain_visible(|program| sandbox.can_see(program));
    }
    let runtimes = Arc::new(runtimes);
    if runtimes.is_empty() {
        return Err(ServerError::NoRuntimes);
    }
    let sandbox_report = match &isolation {
        Isolation::Sandbox(sandbox) => serde_json::to_value(sandbox.report()).unwrap_or_default(),
        Isolation::None => serde_json::json!({"level": "none"}),
    };
    let runner = Runner::new(config.work_root.clone(), isolation)
        .map_err(|source| ServerError::WorkRoot {
            path: config.work_root.clone(),
            source,
        })?
        .with_compile_limits(config.build_limits(), config.policy.max_limits)
        .with_output_caps(config.output_caps);
    let _registration = announce(&config, addr);
    let (store, writer_thread) = open_store(&config).await?;
    store.set_wal_max(config.wal_max_bytes);

    let instance = uuid::Uuid::new_v4().simple().to_string();
    let node_prefix = format!("{}/", config.node_id);
    let owner_prefix = format!("{node_prefix}{}/", &instance[..12]);
    match store.rescue_node(&node_prefix, &owner_prefix).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            jobs = n,
            "rescued jobs left running by this node's previous run"
        ),
        Err(e) => tracing::error!(error = %e, "could not rescue the previous run's jobs"),
    }

    let loopback = config.listen.ip().is_loopback();
    let guard = Guard::load(&store, loopback || config.insecure, config.token_rate)
        .await
        .map_err(|source| ServerError::Store {
            db: shown_db(&config),
            source,
        })?;
    match (guard.tokens_exist(), loopback, config.insecure) {
        (true, _, _) => tracing::info!("API tokens are required"),
        (false, true, _) => {
            tracing::info!("no API token exists: open to whoever can reach loopback");
        }
        (false, false, true) => tracing::warn!(
            listen = %config.listen,
            "no API token exists and --insecure was given: OPEN to whoever can reach this address"
        ),
        (false, false, false) => return Err(ServerError::Insecure(config.listen)),
    }
    let guard = Arc::new(guard);
    let stop_guarding = CancellationToken::new();
    let guarding =
        tokio::spawn(Arc::clone(&guard).keep_fresh(store.clone(), stop_guarding.clone()));

    let deliverer = Deliverer::new(
        store.clone(),
        config.policy.callbacks.clone(),
        config.webhooks.clone(),
    )
    .await?
    .with_shape(CallbackShape::Judge0, crate::api::judge0_callbacks());
    let stop_delivering = CancellationToken::new();
    let deliveries = tokio::spawn(Arc::new(deliverer).run(stop_delivering.clone()));

    let running = Running::default();
    let stopping = Stopping::default();
    let live = Live::default();
    let follower = tokio::spawn(live.clone().follow(
        store.clone(),
        config.poll_interval,
        stopping.claiming.clone(),
    ));
    let workers = Arc::new(Workers {
        store: store.clone(),
        runner,
        runtimes: Arc::clone(&runtimes),
        running: running.clone(),
        live: live.clone(),
        lease: config.lease,
        poll_interval: config.poll_interval,
        owner_prefix,
    });
    let mut worker_tasks = workers.spawn(config.workers, &stopping);

    let state = AppState {
        workers,
        versions_asked: Arc::default(),
        sandbox: Arc::new(sandbox_report),
        store,
        runtimes: Arc::clone(&runtimes),
        running,
        streams: Arc::new(tokio::sync::Semaphore::new(config.sse_max_streams)),
        live,
        config: Arc::clone(&config),
        stopping: stopping.claiming.clone(),
        guard,
    };
    let names: Vec<_> = runtimes.iter().map(|r| r.name.clone()).collect();
    tracing::info!(
        %addr,
        db = %shown_db(&config),
        workers = config.workers,
        runtimes = %names.join(", "),
        "kiln is serving"
    );
    on_listening(addr);

    let stop_accepting = stopping.claiming.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new jobs are accepted or claimed");
        stop_accepting.cancel();
    });
    // Serves until shutdown begins. A worker task that ends meanwhile is a bug, and is logged.
    tokio::join!(
        http::serve(
            listener,
            api::router(state),
            config.http,
            stopping.claiming.clone(),
        ),
        stopping.watch(&mut worker_tasks),
    );

    // Stage two: running jobs get the grace period, then are killed and requeued.
    stopping
        .drain(&mut worker_tasks, config.shutdown_grace)
        .await;
    stop_delivering.cancel();
    stop_guarding.cancel();
    if let Err(e) = guarding.await {
        tracing::error!(error = %e, "the token refresher failed");
    }
    if let Err(e) = deliveries.await {
        tracing::error!(error = %e, "the webhook deliverer failed");
    }
    if let Err(e) = follower.await {
        tracing::error!(error = %e, "the live stream follower failed");
    }
    // Every store handle is gone now; SQLite's writer commits what is pending and closes the
    // file (on PostgreSQL every write has already returned committed).
    if let Some(writer_thread) = writer_thread {
        let closed = tokio::task::spawn_blocking(move || writer_thread.join());
        if tokio::time::timeout(WRITER_CLOSE_TIMEOUT, closed)
            .await
            .is_err()
        {
            tracing::error!("the database writer did not finish in time; exiting without it");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
