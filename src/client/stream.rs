//! Following one of the server's event streams (a job's or a batch's) to its end, for `kiln
//! watch` and `kiln batch --wait`: parsing Server-Sent Events, and resuming after the last event
//! id seen when a stream ends early (the server restarting, or dropping a client that fell
//! behind), so the caller sees every event once. It tells the caller apart a stream that ended
//! (its last event, or `204`: nothing left) from one the server will not give (an older server
//! without it, or no free stream slot), which callers may replace by long-polling.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use super::api::{Api, api_error_from, content_type, transport_error};
use super::{ClientError, note};

/// How many times in a row a stream is reopened after ending early or not answering.
const RECONNECTS: u32 = 5;

/// How following a stream ended.
pub(super) enum Followed {
    /// The stream carried its last event, or had nothing left to carry.
    Ended,
    /// The server does not offer the stream; the error says why.
    Refused(ClientError),
}

/// What asking for a stream gave.
enum Opened {
    Stream(reqwest::Response),
    Ended,
    Refused(ClientError),
}

/// What a stream hands its follower.
pub(super) enum Step<'a> {
    /// A message and its data (`null` if not JSON).
    Message(&'a SseMessage, &'a Value),
    /// The stream was opened again after ending early: a job's stream sends the current run's
    /// output from its start again, which the follower has partly seen.
    Reopened,
}

/// Follows the stream at `base/v1/<segments>` from its first event, handing each step to
/// `handle`, which says whether that message was the last.
pub(super) async fn follow(
    api: &Api,
    segments: &[&str],
    handle: impl FnMut(Step<'_>) -> Result<bool, ClientError>,
) -> Result<Followed, ClientError> {
    follow_from(api, segments, 0, handle).await
}

/// [`follow`], from the event after `after`.
pub(super) async fn follow_from(
    api: &Api,
    segments: &[&str],
    after: i64,
    mut handle: impl FnMut(Step<'_>) -> Result<bool, ClientError>,
) -> Result<Followed, ClientError> {
    let (mut after, mut failures, mut opened) = (after, 0, false);
    loop {
        let mut response = match open(api, segments, after).await {
            Ok(Opened::Stream(response)) => response,
            Ok(Opened::Ended) => return Ok(Followed::Ended),
            Ok(Opened::Refused(err)) => return Ok(Followed::Refused(err)),
            Err(err) if is_transient(&err) && failures < RECONNECTS => {
                failures += 1;
                note(&format!("{err}; reconnecting"));
                tokio::time::sleep(Duration::from_secs(1 << failures)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        if std::mem::replace(&mut opened, true) {
            handle(Step::Reopened)?;
        }
        let mut parser = SseParser::default();
        // Read errors end this connection like an early end does: resumed below.
        while let Ok(Some(chunk)) = response.chunk().await {
            for message in parser.push(&chunk) {
                failures = 0;
                if let Some(id) = message.id {
                    after = after.max(id);
                }
                if message.event == "dropped" {
                    note("the server dropped this stream as too slow; resuming");
                    continue;
                }
                let data = serde_json::from_str(&message.data).unwrap_or(Value::Null);
                if handle(Step::Message(&message, &data))? {
                    return Ok(Followed::Ended);
                }
            }
        }
        failures += 1;
        if failures > RECONNECTS {
            return Err(ClientError::BadResponse {
                url: api.base.to_string(),
                detail: "the event stream kept ending early".to_owned(),
            });
        }
    }
}

/// Asks for the stream after event `after`.
async fn open(api: &Api, segments: &[&str], after: i64) -> Result<Opened, ClientError> {
    let response = api
        .http
        .get(api.url(segments))
        .header(ACCEPT, "text/event-stream")
        .header("last-event-id", after.to_string())
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    if status == StatusCode::NO_CONTENT {
        return Ok(Opened::Ended);
    }
    let is_stream = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status.is_success() && is_stream {
        return Ok(Opened::Stream(response));
    }
    let url = response.url().clone();
    let kind = content_type(&response);
    let body = response.bytes().await.map_err(transport_error)?;
    if status.is_success() {
        return Ok(Opened::Refused(ClientError::BadResponse {
            url: url.to_string(),
            detail: format!("{status} without an event stream"),
        }));
    }
    let err = api_error_from(&url, status, &kind, &body);
    // The thing itself is unknown, or the server cannot answer now: errors, not refusals. The
    // rest (404 for the endpoint, 406, 429) means this server will not stream it.
    let unknown = matches!(&err, ClientError::Api { code: Some(code), .. }
        if code.ends_with("_not_found"));
    if unknown || status.is_server_error() {
        return Err(err);
    }
    Ok(Opened::Refused(err))
}

/// A server that is restarting does not answer, or answers 503, for a while.
fn is_transient(err: &ClientError) -> bool {
    match err {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE,
        _ => false,
    }
}

/// One message of a Server-Sent Events stream (the fields kiln sends).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SseMessage {
    pub(super) id: Option<i64>,
    pub(super) event: String,
    pub(super) data: String,
}

/// Splits a byte stream into SSE messages; comments (keep-alives) are skipped.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        self.buffer
            .extend(bytes.iter().copied().filter(|&b| b != b'\r'));
        let mut messages = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let mut message = SseMessage {
                id: None,
                event: "message".to_owned(),
                data: String::new(),
            };
            let mut fields = 0;
            for line in block.lines().filter(|line| !line.starts_with(':')) {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                fields += 1;
                match field {
                    "id" => message.id = value.parse().ok(),
                    "event" => message.event = value.to_owned(),
                    "data" if message.data.is_empty() => message.data = value.to_owned(),
                    "data" => {
                        message.data.push('\n');
                        message.data.push_str(value);
                    }
                    _ => fields -= 1,
                }
            }
            if fields > 0 {
                messages.push(message);
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_are_split_across_reads_and_comments_skipped() {
        let mut parser = SseParser::default();
        assert!(
            parser
                .push(b": keep-alive\n\nid: 7\nevent: job.qu")
                .is_empty()
        );
        let messages = parser.push(b"eued\ndata: {\"a\":1}\r\n\r\nevent: output\ndata: x\n\n");
        assert_eq!(
            messages,
            [
                SseMessage {
                    id: Some(7),
                    event: "job.queued".into(),
                    data: r#"{"a":1}"#.into()
                },
                SseMessage {
                    id: None,
                    event: "output".into(),
                    data: "x".into()
                },
            ]
        );
    }
}
