//! Who is asking: API tokens, the tenant each acts for, and how fast each may ask.
//!
//! A token is `kiln_` and 256 random bits in hex, printed once by `kiln token create`; the
//! database keeps only its SHA-256 (the token is as random as a key, so a fast hash is as safe
//! as a slow password hash and costs nothing per request). The [`Guard`] holds the hashes of the
//! tokens in force, reloaded from the database every [`REFRESH`], so tokens made or revoked with
//! the command line take effect on a running server within that time. A presented token is
//! hashed, looked up by the first bytes of its hash, and compared in full in constant time.
//!
//! Until the first token is made, a server on a loopback address (or one started with
//! `--insecure`) is open: every request acts with full rights, as the single-user default must.
//! Once any token exists, revoked ones included, every request needs a valid one.
//!
//! Each token also has a token bucket (`rate` requests a second, `burst` at once), so a client
//! that asks too fast is told when to come back instead of crowding out the others. On SQLite
//! the bucket is kept in memory, for the tokens in force only: the file is one server's. On
//! PostgreSQL a token may send its requests to any node, so the bucket is a row every node
//! charges ([`Store::take_token`]) and the limit holds for the cluster. A node that was told to
//! wait remembers until when, and refuses the token again without asking the database: other
//! nodes' requests can only make the wait longer, never shorter. A node that cannot reach the
//! database charges its own bucket meanwhile, and says so once.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::store::{ActiveToken, Store, StoreError, Visibility};

/// Every token starts with this, so a leaked one is easy to recognise (and to search for).
pub const TOKEN_PREFIX: &str = "kiln_";

/// Whether `name` may be a tenant's, as `kiln token create` takes it and a listing's `tenant=`
/// names it: 1 to 64 letters, digits, `.`, `_` or `-`, so that it is safe in a path, a log line
/// or a metric label as it is.
pub fn is_tenant_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How often the tokens in force are read again from the database.
pub const REFRESH: Duration = Duration::from_secs(1);

/// On whose behalf a request acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No token needed (no token exists yet, on loopback or `--insecure`): sees everything,
    /// and what it submits belongs to no tenant.
    Open,
    Token {
        tenant: String,
        /// Sees every tenant's rows and the global feed.
        admin: bool,
        /// The token's hash: the key of its rate limit.
        hash: [u8; 32],
    },
}

impl Principal {
    /// Which rows it may see.
    pub fn visibility(&self) -> Visibility {
        match self {
            Principal::Open | Principal::Token { admin: true, .. } => Visibility::All,
            Principal::Token { tenant, .. } => Visibility::Tenant(tenant.clone()),
        }
    }

    /// The tenant what it submits belongs to.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Open => None,
            Principal::Token { tenant, .. } => Some(tenant),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this server needs an API token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the API token is not valid (unknown, revoked or malformed)")]
    Invalid,
    #[error("too many requests for this token; try again in {retry_after} s")]
    RateLimited { retry_after: u32 },
}

/// How fast one token may make requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests a second, sustained.
    pub rate: f64,
    /// Requests at once after a quiet spell.
    pub burst: f64,
}

/// The tokens in force, and the rate limits of their holders.
pub struct Guard {
    /// True if the server may run without tokens (loopback, or `--insecure`).
    open_allowed: bool,
    tokens: RwLock<Table>,
    limit: Option<RateLimit>,
    /// Where the buckets shared with other nodes are kept, if anywhere.
    shared: Option<Store>,
    /// Until when each token was told to wait by the shared bucket.
    refused: Mutex<HashMap<[u8; 32], Instant>>,
    /// True while the shared bucket cannot be reached, so that it is said once.
    shared_failing: AtomicBool,
    /// The buckets kept here: every token's on SQLite, and on PostgreSQL while the database
    /// cannot be reached.
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

#[derive(Default)]
struct Table {
    /// Tokens by the first 8 bytes of their hash.
    by_prefix: HashMap<[u8; 8], Vec<ActiveToken>>,
    /// Whether any token was ever made.
    any: bool,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Guard {
    /// Reads the tokens in force. `open_allowed`: the server may run without tokens as long as
    /// none exists.
    pub async fn load(
        store: &Store,
        open_allowed: bool,
        limit: Option<RateLimit>,
    ) -> Result<Guard, StoreError> {
        let guard = Guard {
            open_allowed,
            tokens: RwLock::new(Table::default()),
            limit,
            shared: Some(store.clone()),
            refused: Mutex::new(HashMap::new()),
            shared_failing: AtomicBool::new(false),
            buckets: Mutex::new(HashMap::new()),
        };
        guard.refresh(store).await?;
        Ok(guard)
    }

    /// True once any token was made: from then on, every request needs one.
    pub fn tokens_exist(&self) -> bool {
        self.table().any
    }

    /// Who sends `authorization` (the header's value, if any), charged one request.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Result<Principal, Refusal> {
        let principal = self.authenticate(authorization)?;
        if let Principal::Token { hash, .. } = &principal {
            self.charge(hash).await?;
        }
        Ok(principal)
    }

    fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, Refusal> {
        let table = self.table();
        let Some(value) = authorization else {
            return if self.open_allowed && !table.any {
                Ok(Principal::Open)
            } else {
                Err(Refusal::Missing)
            };
        };
        let token = bearer(value).ok_or(Refusal::Invalid)?;
        let hash = hash(token);
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&hash[..8]);
        let found = table.by_prefix.get(&prefix).and_then(|candidates| {
            candidates
                .iter()
                .find(|known| bool::from(known.hash.ct_eq(&hash)))
        });
        match found {
            Some(known) => Ok(Principal::Token {
                tenant: known.tenant.clone(),
                admin: known.admin,
                hash,
            }),
            None => Err(Refusal::Invalid),
        }
    }

    async fn charge(&self, hash: &[u8; 32]) -> Result<(), Refusal> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        if let Some(store) = &self.shared {
            if let Some(until) = lock(&self.refused).get(hash).copied() {
                let now = Instant::now();
                if until > now {
                    return Err(rate_limited((until - now).as_secs_f64()));
                }
            }
            match store.take_token(&hex(hash), limit.rate, limit.burst).await {
                Ok(Some(wait)) => {
                    if self.shared_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("the shared rate limits are reachable again");
                    }
                    if wait <= 0.0 {
                        return Ok(());
                    }
                    lock(&self.refused)
                        .insert(*hash, Instant::now() + Duration::from_secs_f64(wait));
                    return Err(rate_limited(wait));
                }
                Ok(None) => {}
                Err(e) => {
                    if !self.shared_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot reach the shared rate limits; \
                            limiting each token on this node alone until the database answers");
                    }
                }
            }
        }
        self.charge_here(hash, limit)
    }

    fn charge_here(&self, hash: &[u8; 32], limit: RateLimit) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry(*hash).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * limit.rate;
        bucket.tokens = (bucket.tokens + refill).min(limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(rate_limited((1.0 - bucket.tokens) / limit.rate))
    }

    /// Reads the tokens in force again, and forgets the buckets of tokens no longer in force.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let (active, any) = store.active_tokens().await?;
        let mut by_prefix: HashMap<[u8; 8], Vec<ActiveToken>> = HashMap::new();
        for token in active {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&token.hash[..8]);
            by_prefix.entry(prefix).or_default().push(token);
        }
        let in_force = |hash: &[u8; 32]| {
            by_prefix
                .values()
                .flatten()
                .any(|token| token.hash == *hash)
        };
        lock(&self.buckets).retain(|hash, _| in_force(hash));
        lock(&self.refused).retain(|hash, _| in_force(hash));
        *self
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Table { by_prefix, any };
        Ok(())
    }

    /// Refreshes every [`REFRESH`] until `stop`.
    pub async fn keep_fresh(self: Arc<Self>, store: Store, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = self.refresh(&store).await {
                tracing::warn!(error = %e, "cannot read the API tokens; keeping the ones known");
            }
        }
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A refusal for a token that may ask again in `wait` seconds, said in whole seconds as
/// `Retry-After` takes them.
fn rate_limited(wait: f64) -> Refusal {
    Refusal::RateLimited {
        retry_after: wait.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
    }
}

/// A lock that a panic elsewhere has not made unusable: the maps stay consistent whatever a
/// holder was doing.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The token in `Bearer <token>`; the scheme is case-insensitive, as HTTP says.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|token| !token.is_empty())
}

/// The SHA-256 of a token's text, as stored.
pub fn hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex(&buf))
}

/// A new token: its text (to print once) and what the database keeps of it, its hash and its
/// first characters.
pub struct NewToken {
    pub token: String,
    pub hash: String,
    pub prefix: String,
}

pub fn new_token() -> std::io::Result<NewToken> {
    let token = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
    Ok(NewToken {
        hash: hex(&hash(token.as_bytes())),
        prefix: token[..TOKEN_PREFIX.len() + 8].to_owned(),
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: Option<RateLimit>, tokens: &[(&str, &str, bool)]) -> Guard {
        let mut by_prefix: HashMap<[u8; 8], Vec<ActiveToken>> = HashMap::new();
        for (token, tenant, admin) in tokens {
            let hash = hash(token.as_bytes());
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&hash[..8]);
            by_prefix.entry(prefix).or_default().push(ActiveToken {
                hash,
                tenant: (*tenant).to_owned(),
                admin: *admin,
            });
        }
        Guard {
            open_allowed: true,
            tokens: RwLock::new(Table {
                by_prefix,
                any: !tokens.is_empty(),
            }),
            limit,
            shared: None,
            refused: Mutex::new(HashMap::new()),
            shared_failing: AtomicBool::new(false),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn a_generated_secret_is_256_random_bits_in_hex() {
        let a = random_hex(32).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(32).unwrap());
    }

    #[test]
    fn a_token_is_256_random_bits_and_only_its_hash_and_first_characters_are_kept() {
        let made = new_token().unwrap();
        assert_eq!(made.token.len(), TOKEN_PREFIX.len() + 64);
        assert!(made.token.starts_with(&made.prefix));
        assert_eq!(made.hash, hex(&hash(made.token.as_bytes())));
        assert_ne!(made.token, new_token().unwrap().token);
    }

    #[tokio::test]
    async fn a_request_acts_for_the_tenant_of_its_token_and_others_are_refused() {
        let g = guard(
            None,
            &[("kiln_a", "acme", false), ("kiln_root", "ops", true)],
        );
        let acme = g.check(Some(b"Bearer kiln_a")).await.unwrap();
        assert_eq!(acme.visibility(), Visibility::Tenant("acme".into()));
        assert_eq!(
            g.check(Some(b"bearer  kiln_root "))
                .await
                .unwrap()
                .visibility(),
            Visibility::All
        );
        assert_eq!(g.check(Some(b"Bearer kiln_b")).await, Err(Refusal::Invalid));
        assert_eq!(
            g.check(Some(b"Basic a2lsbjpf")).await,
            Err(Refusal::Invalid)
        );
        assert_eq!(
            g.check(None).await,
            Err(Refusal::Missing),
            "tokens exist: no open access"
        );
        assert_eq!(guard(None, &[]).check(None).await, Ok(Principal::Open));
    }

    #[tokio::test]
    async fn a_token_over_its_rate_is_told_when_to_come_back() {
        let limit = RateLimit {
            rate: 0.5,
            burst: 3.0,
        };
        let g = guard(
            Some(limit),
            &[("kiln_a", "acme", false), ("kiln_b", "beta", false)],
        );
        for _ in 0..3 {
            assert!(g.check(Some(b"Bearer kiln_a")).await.is_ok());
        }
        assert_eq!(
            g.check(Some(b"Bearer kiln_a")).await,
            Err(Refusal::RateLimited { retry_after: 2 })
        );
        assert!(
            g.check(Some(b"Bearer kiln_b")).await.is_ok(),
            "buckets are per token"
        );
    }
}
