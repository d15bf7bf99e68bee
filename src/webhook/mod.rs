//! Webhooks: calling a job's `callback_url` when it ends, and a batch's when its last case ends.
//! The store writes an outbox row in the same transaction as the job's terminal state or the
//! batch's `batch.completed` event; the [`Deliverer`] here takes due rows, POSTs their payload
//! signed with HMAC-SHA256 (`webhook::signature`) under the key of the row's tenant (or the server's,
//! for rows without one), and records every attempt's outcome with a
//! `webhook.delivered` or `webhook.failed` event. Failures (no answer, or any answer but a 2xx)
//! are retried with exponential backoff and jitter until a horizon; rows outlive the process, so
//! a restarted server resumes what is pending.
//!
//! Calls run on their own tasks, at most `concurrency` at once, each under a timeout: a slow or
//! dead receiver holds one slot for at most that long and never a worker. Where calls may go
//! is decided by [`crate::job::hosts`], on the name at submit and on the resolved address at delivery.
//!
//! A row of another [`CallbackShape`] than kiln's is a call some other API's clients expect (a
//! Judge0 client, a PUT of the submission). That API hands its [`Shaped`] to the deliverer: the
//! method, the attempts and timeout of its own protocol, and how the body is rendered from the
//! ended job. It is made, retried, signed and recorded as every other call.

mod signature;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::Notice;
use crate::job::hosts::HostPolicy;
use crate::job::time::now_ms;
use crate::job::{CallbackShape, EventKind, Job};
use crate::store::{Attempt, Delivery, Store, StoreError, Subject};

/// Looks for due rows at least this often even when nothing was announced: rows written by
/// another server on the same file, and retries that came due, are found within this time.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Beyond the request timeout, how long a taken row is held before someone may take it again,
/// covering the time to record the outcome.
const HOLD_MARGIN: Duration = Duration::from_secs(5);

/// Where the generated signing key is kept (table `settings`).
const SECRET_SETTING: &str = "webhook_secret";

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The signing key. `None`: a random one is generated at the first start and kept in the
    /// database, so signatures always exist and survive restarts.
    pub secret: Option<String>,
    /// Each call's limit, from connecting to the answer's status line.
    pub timeout: Duration,
    /// No attempt is made later than this after the job ended (or the batch completed).
    pub horizon: Duration,
    /// No more attempts than this per call.
    pub max_attempts: u32,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// The delay before the first retry; each later one doubles it, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            timeout: Duration::from_secs(10),
            horizon: Duration::from_secs(24 * 3600),
            max_attempts: 30,
            concurrency: 32,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot keep the webhook signing key in the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot generate a webhook signing key: {0}")]
    Random(std::io::Error),
    #[error("the webhook signing key cannot be used as an HMAC key")]
    Secret,
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(reqwest::Error),
}

/// How the calls of one shape other than kiln's own are made.
pub struct Shaped {
    pub method: reqwest::Method,
    /// At most this many attempts, and not more than the server's own limit.
    pub max_attempts: u32,
    /// Each call's limit, and not longer than the server's own.
    pub timeout: Duration,
    /// The body, from the job that ended.
    pub render: Box<dyn Fn(&Job) -> String + Send + Sync>,
}

/// Makes the calls the outbox holds.
pub struct Deliverer {
    store: Store,
    client: reqwest::Client,
    policy: Arc<HostPolicy>,
    config: WebhookConfig,
    /// Signs the calls of jobs and batches without a tenant.
    signer: signature::Signer,
    /// Each tenant's, as first needed: a tenant's calls are signed with its own key.
    tenant_signers: Mutex<HashMap<String, signature::Signer>>,
    shapes: HashMap<CallbackShape, Shaped>,
}

impl Deliverer {
    pub async fn new(
        store: Store,
        policy: HostPolicy,
        config: WebhookConfig,
    ) -> Result<Deliverer, WebhookError> {
        let secret = match &config.secret {
            Some(secret) => secret.clone(),
            None => {
                let initial = crate::auth::random_hex(32).map_err(WebhookError::Random)?;
                store.setting_or_insert(SECRET_SETTING, initial).await?
            }
        };
        let signer = signature::Signer::new(&secret).map_err(|_| WebhookError::Secret)?;
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver(Arc::clone(&policy))))
            // A redirect would lead to a host nobody checked; a proxy would resolve names itself.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Deliverer {
            store,
            client,
            policy,
            config,
            signer,
            tenant_signers: Mutex::new(HashMap::new()),
            shapes: HashMap::new(),
        })
    }

    /// Makes the calls of `shape` as `shaped` says; a row of a shape nobody handed over fails
    /// for good with that said.
    pub fn with_shape(mut self, shape: CallbackShape, shaped: Shaped) -> Deliverer {
        self.shapes.insert(shape, shaped);
        self
    }

    /// The key `tenant`'s calls are signed with; made and stored on first use if its first
    /// token did not make it.
    async fn tenant_signer(&self, tenant: &str) -> Result<signature::Signer, WebhookError> {
        if let Some(signer) = self.signers().get(tenant) {
            return Ok(signer.clone());
        }
        let initial = crate::auth::random_hex(32).map_err(WebhookError::Random)?;
        let secret = self.store.tenant_secret(tenant.to_owned(), initial).await?;
        let signer = signature::Signer::new(&secret).map_err(|_| WebhookError::Secret)?;
        self.signers().insert(tenant.to_owned(), signer.clone());
        Ok(signer)
    }

    fn signers(&self) -> std::sync::MutexGuard<'_, HashMap<String, signature::Signer>> {
        self.tenant_signers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivers until `stop` is cancelled. Calls still in flight then are abandoned: their rows
    /// stay pending and are tried again once their hold runs out, by this server's next run.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut notices = self.store.bus().subscribe();
        let mut in_flight = JoinSet::new();
        let hold = self.config.timeout + HOLD_MARGIN;
        loop {
            while in_flight.try_join_next().is_some() {}
            let mut wake_at = Instant::now() + IDLE_CHECK;
            let free = self.config.concurrency.saturating_sub(in_flight.len());
            match self.store.next_webhook_due().await {
                Ok(Some(due)) => {
                    let wait = due - now_ms();
                    if wait <= 0 && free > 0 {
                        match self.store.claim_webhooks(free, hold).await {
                            Ok(batch) if !batch.is_empty() => {
                                for delivery in batch {
                                    let this = Arc::clone(&self);
                                    in_flight.spawn(async move { this.deliver(delivery).await });
                                }
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot take webhooks to deliver"),
                        }
                    } else if wait > 0 {
                        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
                        wake_at = wake_at.min(Instant::now() + wait);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot look for due webhooks"),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(wake_at) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = outbox_written(&mut notices) => {}
            }
        }
        in_flight.shutdown().await;
    }

    async fn deliver(&self, delivery: Delivery) {
        let attempt = self.attempt(&delivery).await;
        let (id, url) = (delivery.id, delivery.url.clone());
        match &attempt {
            Attempt::Delivered { status_code } => {
                tracing::debug!(delivery = id, %url, status_code, "webhook delivered");
            }
            Attempt::Failed {
                error, retry_at, ..
            } => tracing::info!(
                delivery = id,
                %url,
                %error,
                retry = retry_at.is_some(),
                "webhook attempt failed"
            ),
        }
        match self.store.record_webhook(delivery, attempt).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                delivery = id,
                "this webhook attempt was already recorded by another server"
            ),
            Err(e) => tracing::warn!(
                delivery = id,
                error = %e,
                "cannot record a webhook attempt; it will be made again"
            ),
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let give_up = |status_code, error| Attempt::Failed {
            status_code,
            error,
            retry_at: None,
        };
        // The policy may have been tightened since the job was submitted.
        if let Err(why) = self.policy.check_url(&delivery.url) {
            return give_up(None, why);
        }
        let shaped = match delivery.shape {
            CallbackShape::Kiln => None,
            other => match self.shapes.get(&other) {
                Some(shaped) => Some(shaped),
                None => {
                    return give_up(None, format!("no {} callbacks here", other.as_str()));
                }
            },
        };
        let mut config = self.config.clone();
        if let Some(shaped) = shaped {
            config.max_attempts = config.max_attempts.min(shaped.max_attempts);
            config.timeout = config.timeout.min(shaped.timeout);
        }
        let retry = || {
            retry_at(
                &config,
                delivery.attempts + 1,
                delivery.created_at,
                now_ms(),
                RandomState::new().hash_one(delivery.id),
            )
        };
        let signer = match &delivery.tenant {
            None => self.signer.clone(),
            Some(tenant) => match self.tenant_signer(tenant).await {
                Ok(signer) => signer,
                // Never sent unsigned, nor signed with a key its receiver does not know.
                Err(e) => {
                    return Attempt::Failed {
                        status_code: None,
                        error: e.to_string(),
                        retry_at: retry(),
                    };
                }
            },
        };
        let (method, body) = match shaped {
            None => (reqwest::Method::POST, delivery.payload.clone()),
            Some(shaped) => match self.rendered(delivery, shaped).await {
                Ok(body) => (shaped.method.clone(), body),
                Err(error) => {
                    return Attempt::Failed {
                        status_code: None,
                        error,
                        retry_at: retry(),
                    };
                }
            },
        };
        let unix_secs = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let sent = self
            .client
            .request(method, &delivery.url)
            .timeout(config.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::HEADER, signer.sign(unix_secs, body.as_bytes()))
            .header("Kiln-Delivery", delivery.id)
            .header("Kiln-Event", &delivery.event)
            .body(body)
            .send()
            .await;
        let (status_code, error) = match sent {
            Ok(answer) if answer.status().is_success() => {
                return Attempt::Delivered {
                    status_code: answer.status().as_u16(),
                };
            }
            Ok(answer) => (
                Some(answer.status().as_u16()),
                format!("answered {}", answer.status()),
            ),
            Err(e) => match denial(&e) {
                Some(why) => return give_up(None, why.to_owned()),
                None if e.is_timeout() => (None, format!("no answer within {:?}", config.timeout)),
                None => (None, describe(&e)),
            },
        };
        Attempt::Failed {
            status_code,
            error,
            retry_at: retry(),
        }
    }
}

impl Deliverer {
    /// The body of a shaped call, from the job as it ended.
    async fn rendered(&self, delivery: &Delivery, shaped: &Shaped) -> Result<String, String> {
        let Subject::Job(id) = delivery.about else {
            return Err(format!("a {} call reports a job", delivery.shape.as_str()));
        };
        match self.store.job(id).await {
            Ok(Some(job)) => Ok((shaped.render)(&job)),
            Ok(None) => Err(format!("job {id} is not there any more")),
            Err(e) => Err(format!("cannot read job {id}: {e}")),
        }
    }
}

/// Resolves after a job's terminal event or a batch's completion (the only things that write
/// outbox rows), or after missing some notices, which might have included one.
async fn outbox_written(notices: &mut broadcast::Receiver<Notice>) {
    loop {
        match notices.recv().await {
            Ok(notice) if notice.kind.is_terminal() || notice.kind == EventKind::BatchCompleted => {
                break;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => break,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
    // One look at the outbox covers every end announced so far.
    while !matches!(
        notices.try_recv(),
        Err(TryRecvError::Empty | TryRecvError::Closed)
    ) {}
}

/// When to make attempt `made + 1`, after `made` attempts failed: `retry_base` doubled for each
/// earlier failure, capped at `retry_max`, of which a random half is taken off so that calls
/// failing together do not retry together. `None` once past the attempt limit or the horizon.
fn retry_at(
    config: &WebhookConfig,
    made: u32,
    created_at: i64,
    now: i64,
    random: u64,
) -> Option<i64> {
    if made >= config.max_attempts {
        return None;
    }
    let doublings = made.saturating_sub(1).min(31);
    let backoff = config
        .retry_base
        .saturating_mul(1u32 << doublings)
        .min(config.retry_max);
    let backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX / 2);
    let delay = backoff_ms - (random % (backoff_ms / 2 + 1));
    let at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    let horizon = i64::try_from(config.horizon.as_millis()).unwrap_or(i64::MAX);
    (at <= created_at.saturating_add(horizon)).then_some(at)
}

/// Why the policy refused the addresses a name resolved to, if that is why `e` happened.
fn denial(e: &reqwest::Error) -> Option<&str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(Denied(why)) = err.downcast_ref::<Denied>() {
            return Some(why);
        }
        source = err.source();
    }
    None
}

/// The error with its causes: reqwest's own message rarely says more than "error sending
/// request".
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Denied(String);

/// Resolves names for the webhook client and hands it only the addresses the policy allows,
/// so the connection goes to an address that was checked, whatever the name's DNS says later.
struct CheckedResolver(Arc<HostPolicy>);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.0);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut allowed: Vec<SocketAddr> = Vec::new();
            let mut refusal = None;
            for addr in resolved {
                match policy.check_addr(Some(&host), addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(why) => refusal = Some(why),
                }
            }
            match refusal {
                Some(why) if allowed.is_empty() => {
                    Err(Box::new(Denied(format!("{host}: {why}"))) as _)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhookConfig {
        WebhookConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            horizon: Duration::from_secs(3600),
            max_attempts: 10,
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_up_to_half_taken_off_at_random() {
        let c = config();
        for (made, full) in [(1, 1000), (2, 2000), (3, 4000), (7, 60_000), (9, 60_000)] {
            let longest = retry_at(&c, made, 0, 0, 0).unwrap();
            let shortest = retry_at(&c, made, 0, 0, full as u64 / 2).unwrap();
            assert_eq!(longest, full, "after {made} failures");
            assert_eq!(shortest, full / 2, "after {made} failures");
            for random in [1, 77, 12_345, u64::MAX] {
                let at = retry_at(&c, made, 0, 0, random).unwrap();
                assert!((full / 2..=full).contains(&at), "{at} after {made}");
            }
        }
    }

    #[test]
    fn retries_stop_at_the_attempt_limit_or_the_horizon() {
        let c = config();
        assert_eq!(retry_at(&c, 10, 0, 0, 0), None, "ten attempts made");
        assert!(retry_at(&c, 9, 0, 0, 0).is_some());
        let hour = 3_600_000;
        assert_eq!(retry_at(&c, 1, 0, hour - 999, 0), None, "past the horizon");
        assert_eq!(retry_at(&c, 1, 0, hour - 1000, 0), Some(hour));
    }
}
