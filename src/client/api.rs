//! The v1 HTTP API of one server, as the client speaks it: building each request (timeouts,
//! the token, ids escaped into the path), long-polling a job to its end, and turning an answer
//! that is not a 2xx JSON body into the matching [`ClientError`]: the server's own error, or
//! word that whatever answered is not kiln.

use std::error::Error as _;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::ClientError;
use super::submit::Submission;

/// The longest `?wait=` the server honours; longer waits are made of several requests.
const SERVER_MAX_WAIT: Duration = Duration::from_secs(60);
/// How long past the requested long-poll a request may take before we give up on the server.
pub(super) const REQUEST_SLACK: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Lower bound on the spacing of wait requests, so a server that answers a long poll early (an
/// older one, or one behind a proxy that drops the query) is not hammered in a tight loop.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The v1 API of one server.
pub(super) struct Api {
    pub(super) http: reqwest::Client,
    pub(super) base: Url,
}

impl Api {
    pub(super) fn new(base: &str, token: Option<&str>) -> Result<Api, ClientError> {
        let invalid = || {
            ClientError::Usage(format!(
                "invalid server URL {base:?}: expected something like http://127.0.0.1:8000{}",
                if base.contains("://") {
                    String::new()
                } else {
                    format!(" (did you mean http://{base}?)")
                }
            ))
        };
        let base = Url::parse(base).map_err(|_| invalid())?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(invalid());
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Usage("the token must be printable ASCII".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|err| ClientError::Unreachable {
                url: base.to_string(),
                detail: error_chain(&err),
            })?;
        Ok(Api { http, base })
    }

    /// Builds `base/v1/<segments>`, percent-encoding each segment so an odd job id cannot escape
    /// its place in the path, and keeping any path prefix the server is mounted under.
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    pub(super) async fn submit(
        &self,
        submission: &Submission,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .post(self.url(&["jobs"]))
            .timeout(REQUEST_SLACK)
            .json(submission);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        send(request).await
    }

    /// One `GET /v1/jobs/{id}`, long-polling for `wait` seconds if given.
    pub(super) async fn get_job(&self, id: &str, wait: Option<u64>) -> Result<Value, ClientError> {
        let mut request = self.http.request(Method::GET, self.url(&["jobs", id]));
        request = match wait {
            Some(secs) => request
                .query(&[("wait", secs)])
                .timeout(Duration::from_secs(secs) + REQUEST_SLACK),
            None => request.timeout(REQUEST_SLACK),
        };
        send(request).await
    }

    /// The bytes of a file job `id` kept, at `path` (`/`-separated, each part its own segment).
    pub(super) async fn job_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut url = self.url(&["jobs", id, "files"]);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(path.split('/'));
        }
        let response = self
            .http
            .get(url)
            .timeout(REQUEST_SLACK)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok(body.to_vec())
    }

    /// Long-polls a job until it is terminal or `deadline` passes (never, if `None`), and returns
    /// the last state seen.
    pub(super) async fn poll_job(
        &self,
        id: &str,
        deadline: Option<Instant>,
    ) -> Result<Value, ClientError> {
        loop {
            let chunk = match deadline {
                None => SERVER_MAX_WAIT,
                Some(deadline) => deadline
                    .saturating_duration_since(Instant::now())
                    .min(SERVER_MAX_WAIT),
            };
            let started = Instant::now();
            let job = self.get_job(id, Some(ceil_secs(chunk))).await?;
            // The server counts whole seconds, so less than one left means the wait is used up.
            let expired = deadline.is_some_and(|deadline| {
                deadline.saturating_duration_since(Instant::now()) < Duration::from_secs(1)
            });
            if is_terminal(&job) || expired {
                return Ok(job);
            }
            if let Some(rest) = MIN_POLL_INTERVAL.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// `GET /v1/runtimes`.
    pub(super) async fn runtimes(&self) -> Result<Value, ClientError> {
        let request = self
            .http
            .get(self.url(&["runtimes"]))
            .timeout(REQUEST_SLACK);
        send(request).await
    }

    /// [`Api::poll_job`], showing the job's state (and its progress) on a spinner while it lasts,
    /// if stderr is a terminal: asked every second there, so the spinner follows it.
    pub(super) async fn wait_job(
        &self,
        id: &str,
        deadline: Option<Instant>,
    ) -> Result<Value, ClientError> {
        let spinner = indicatif::ProgressBar::new_spinner();
        if spinner.is_hidden() {
            return self.poll_job(id, deadline).await;
        }
        spinner.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        spinner.enable_steady_tick(Duration::from_millis(120));
        let job = loop {
            let step = Instant::now() + Duration::from_secs(1);
            let until = deadline.map_or(step, |deadline| deadline.min(step));
            let job = self.poll_job(id, Some(until)).await?;
            spinner.set_message(super::show::state_line(&job));
            let expired = deadline.is_some_and(|deadline| Instant::now() >= deadline);
            if is_terminal(&job) || expired {
                break job;
            }
        };
        spinner.finish_and_clear();
        Ok(job)
    }

    pub(super) async fn job_events(&self, id: &str) -> Result<Value, ClientError> {
        let request = self
            .http
            .get(self.url(&["jobs", id, "events"]))
            .timeout(REQUEST_SLACK);
        send(request).await
    }

    /// Every event of a batch and its cases, oldest first, as one `{"events": [...]}`.
    pub(super) async fn batch_events(&self, id: &str) -> Result<Value, ClientError> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let request = self
                .http
                .get(self.url(&["batches", id, "events"]))
                .query(&[("after", after), ("limit", 1000)])
                .timeout(REQUEST_SLACK);
            let page = send(request).await?;
            let rows = page
                .get("events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let full = rows.len() == 1000;
            events.extend(rows);
            match page.get("next_after").and_then(Value::as_i64) {
                Some(next) if full && next > after => after = next,
                _ => return Ok(serde_json::json!({ "events": events })),
            }
        }
    }

    /// The global feed after event `after`, oldest first; without it, the newest `limit` events
    /// (newest first, as the server pages them).
    pub(super) async fn global_events(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .get(self.url(&["events"]))
            .query(&[("limit", limit)])
            .timeout(REQUEST_SLACK);
        request = match after {
            Some(after) => request.query(&[("after", after)]),
            None => request.query(&[("order", "newest")]),
        };
        send(request).await
    }

    pub(super) async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        let request = self
            .http
            .post(self.url(&["jobs", id, "cancel"]))
            .timeout(REQUEST_SLACK);
        send(request).await
    }

    /// `GET /v1/<segments>` with a query, for the reads that need nothing more.
    pub(super) async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        let request = self
            .http
            .get(self.url(segments))
            .query(query)
            .timeout(REQUEST_SLACK);
        send(request).await
    }
}

/// Sends a request and decodes a 2xx JSON answer; anything else becomes the matching error.
pub(super) async fn send(request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
    let response = request.send().await.map_err(transport_error)?;
    let url = response.url().clone();
    let status = response.status();
    let kind = content_type(&response);
    let body = response.bytes().await.map_err(transport_error)?;
    if !status.is_success() {
        return Err(api_error_from(&url, status, &kind, &body));
    }
    serde_json::from_slice(&body).map_err(|_| ClientError::NotKiln {
        url: url.origin().ascii_serialization(),
        detail: format!("{status} with {kind} that is not JSON"),
    })
}

pub(super) fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "a body".to_owned(), str::to_owned)
}

/// [`api_error`], unless the body is not kiln's error shape at all: then whatever answered is
/// not kiln (another program on the port, a proxy's page), and its page is no explanation.
pub(super) fn api_error_from(
    url: &Url,
    status: StatusCode,
    kind: &str,
    body: &[u8],
) -> ClientError {
    let is_ours = serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|value| value.get("error").and_then(|e| e.get("code")).is_some());
    // A proxy in front of a kiln that is down answers 502-504 with its own page: that is worth
    // showing as the server's answer.
    if is_ours || status.is_server_error() || body.is_empty() {
        return api_error(status, body);
    }
    ClientError::NotKiln {
        url: url.origin().ascii_serialization(),
        detail: format!("{status} with {kind}"),
    }
}

pub(super) fn transport_error(err: reqwest::Error) -> ClientError {
    let url = err.url().map_or_else(String::new, |url| {
        // Only scheme, host and port: the path and query are ours, not what the user configured.
        url.origin().ascii_serialization()
    });
    ClientError::Unreachable {
        url,
        detail: error_chain(&err),
    }
}

/// reqwest's errors keep the useful part ("Connection refused", "operation timed out") several
/// sources deep, under a top level ("error sending request for url (...)") that only repeats the
/// URL we already show; so show the causes, and the top level only when there are none.
fn error_chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and the OS often repeat the same words one level down.
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

/// Reads the server's `{"error":{"code","message"}}`; a body in another shape (a proxy's HTML
/// page, say) is shown as it is, since it is still the best explanation available.
pub(super) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|value| value.get("error"));
    let field = |name: &str| {
        error
            .and_then(|error| error.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body).trim().to_owned();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("no details").to_owned()
        } else {
            text
        }
    });
    ClientError::Api {
        status,
        code: field("code"),
        message,
    }
}

pub(super) fn job_id<'a>(job: &'a Value, base: &Url) -> Result<&'a str, ClientError> {
    job.get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::BadResponse {
            url: base.to_string(),
            detail: "the accepted job has no \"id\"".to_owned(),
        })
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A job whose status we cannot read is treated as finished: waiting on it would never end.
pub(super) fn is_terminal(job: &Value) -> bool {
    !matches!(
        job.get("status").and_then(Value::as_str),
        Some("queued" | "running")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_show_the_servers_message() {
        let body = br#"{"error":{"code":"conflict","message":"job already finished"}}"#;
        let err = api_error(StatusCode::CONFLICT, body);
        assert_eq!(
            err.to_string(),
            "server answered 409 Conflict: job already finished (conflict)"
        );
        let err = api_error(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(
            err.to_string(),
            "server answered 502 Bad Gateway: Bad Gateway"
        );
        let err = api_error(StatusCode::NOT_FOUND, b"no such page\n");
        assert_eq!(
            err.to_string(),
            "server answered 404 Not Found: no such page"
        );
    }
    #[test]
    fn urls_keep_a_mount_prefix_and_escape_ids() {
        let api = Api::new("http://h:1/kiln/", None).map_err(|err| err.to_string());
        let url = api.map(|api| api.url(&["jobs", "a/b?c", "events"]).to_string());
        assert_eq!(
            url.as_deref(),
            Ok("http://h:1/kiln/v1/jobs/a%2Fb%3Fc/events")
        );
        assert!(matches!(
            Api::new("not a url", None),
            Err(ClientError::Usage(_))
        ));
    }
}
