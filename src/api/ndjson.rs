//! Suites sent as a stream: `POST /v1/batches` with `Content-Type: application/x-ndjson` (or
//! `application/jsonl`), whose first line is the suite's own fields and each further line one
//! case. The body is never held whole: each line is checked as it arrives, by the rules a suite
//! sent whole meets ([`SuiteCheck`]), and the checked case is written to a spool file beside the
//! database ([`spool`]), so the server holds one line and the cases' names whatever the suite's
//! size. Only once the last line is in does one write transaction store the batch, reading its
//! cases back from the spool: a bad line anywhere refuses the whole suite, naming the line, with
//! nothing stored, and the single writer is never held while the body is still arriving.

mod spool;

use std::path::Path;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, ErrorCode};
use super::extract;
use crate::config::Config;
use crate::job::batch::SuiteSpec;
use crate::job::policy::Policy;
use crate::job::validate::{CaseRequest, Rejection, SuiteCheck, SuiteRequest};
use crate::store::{Admission, BatchSubmitted};
use spool::Spool;

/// The content types of a suite sent as a stream; any other body is a suite sent whole.
const CONTENT_TYPES: [&str; 2] = ["application/x-ndjson", "application/jsonl"];

/// What a line may take besides the fields a case is capped by: names, punctuation, escapes.
const LINE_SLACK_BYTES: usize = 64 << 10;

/// True if the request's body is a suite as a stream of lines.
pub(super) fn wanted(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    content_type.is_some_and(|value| {
        let essence = value.split(';').next().unwrap_or_default().trim();
        CONTENT_TYPES
            .iter()
            .any(|t| essence.eq_ignore_ascii_case(t))
    })
}

/// The longest line accepted: a case with its code, stdin, files, args and expected output each
/// at the most the policy allows, the bytes among them in base64 (the longest form they may
/// come in, see [`crate::job::content`]), and room for the JSON around them. No line of a suite
/// the policy accepts is longer, so a longer one is refused before it is held whole.
fn max_line_bytes(policy: &Policy) -> usize {
    let expected = usize::try_from(policy.max_limits.output_bytes).unwrap_or(usize::MAX);
    let in_base64 = |bytes: usize| bytes.div_ceil(3).saturating_mul(4);
    [
        in_base64(policy.max_code_bytes),
        in_base64(policy.max_stdin_bytes),
        in_base64(policy.max_files_bytes),
        policy.max_args_bytes,
        in_base64(expected),
        LINE_SLACK_BYTES,
    ]
    .into_iter()
    .fold(0, usize::saturating_add)
}

/// Reads, checks and spools the suite in `body`, then stores it in one transaction.
pub(super) async fn submit(
    state: &AppState,
    body: Body,
    key: Option<String>,
    admission: Admission,
) -> Result<BatchSubmitted, ApiError> {
    let mut lines = Lines::new(
        body,
        max_line_bytes(&state.config.policy),
        state.config.max_suite_bytes,
    );
    let (suite, count, spool) = match read(state, &mut lines, key).await {
        Ok(read) => read,
        Err(refusal) => {
            // A client still sending would not hear the answer before the rest is read.
            lines.discard_rest().await;
            return Err(refusal);
        }
    };
    let cases = spool.into_cases().map_err(|e| spool_failed(&e))?;
    Ok(state
        .store
        .submit_suite(suite, count, cases, admission)
        .await?)
}

/// The suite's own fields, how many cases followed them, and the cases, checked, in a spool.
async fn read(
    state: &AppState,
    lines: &mut Lines,
    key: Option<String>,
) -> Result<(SuiteSpec, usize, Spool), ApiError> {
    let Some((number, first)) = lines.next().await? else {
        return Err(Rejection::Invalid(
            "the body is empty: its first line must be the suite's fields".into(),
        )
        .into());
    };
    let suite: SuiteRequest = parse(number, &first)?;
    let runtime_files =
        |name: &str, code: &str| state.runtimes.get(name).map(|runtime| runtime.terms(code));
    let mut check = SuiteCheck::new(suite, key, &state.config.policy, runtime_files)
        .map_err(|rejection| rejection.at(&format!("line {number}")))?;
    let mut spool = Spool::create(spool_dir(&state.config)).map_err(|e| spool_failed(&e))?;
    while let Some((number, line)) = lines.next().await? {
        let case: CaseRequest = parse(number, &line)?;
        let case = check.case(case, Some(number))?;
        spool.push(&case).map_err(|e| spool_failed(&e))?;
    }
    let count = check.cases();
    Ok((check.finish()?, count, spool))
}

/// One line as `T`: malformed JSON is `400`, JSON of the wrong shape `422`, as for a suite sent
/// whole, each naming the line and the column in it.
fn parse<T: DeserializeOwned>(number: u64, line: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(line).map_err(|e| {
        let text = e.to_string();
        // The position serde gives is within the line, which is always its line 1.
        let what = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(m, _)| m);
        let place = format!("line {number}, column {}", e.column());
        match e.classify() {
            serde_json::error::Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidRequest,
                format!("{place}: {what}"),
            ),
            _ => ApiError::bad_request(
                ErrorCode::InvalidJson,
                format!("{place}: not valid JSON: {what}"),
            ),
        }
    })
}

/// The SQLite file's own directory: the spool is as large as what the suite adds to the
/// database, so it goes on the same disk rather than into a temporary directory that may be
/// memory. With PostgreSQL the database is elsewhere, and the work root, sized for the runs'
/// files, takes it.
fn spool_dir(config: &Config) -> &Path {
    if config.postgres.is_some() {
        return &config.work_root;
    }
    config
        .db_path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn spool_failed(error: &std::io::Error) -> ApiError {
    tracing::error!(error = %error, "cannot write or read a suite's spool file");
    ApiError::internal()
}

/// The body's non-blank lines, one at a time, each with its number (counting every line from
/// 1), holding no more of the body than one line and the chunk it ends in.
struct Lines {
    chunks: BodyDataStream,
    buffer: BytesMut,
    /// How much of `buffer` has been searched for the end of a line.
    searched: usize,
    /// Lines taken from `buffer`, blank ones included.
    taken: u64,
    read: u64,
    max_line: usize,
    max_body: u64,
    /// Nothing more will come: the body ended, failed or went over `max_body`.
    ended: bool,
}

impl Lines {
    fn new(body: Body, max_line: usize, max_body: u64) -> Lines {
        Lines {
            chunks: body.into_data_stream(),
            buffer: BytesMut::new(),
            searched: 0,
            taken: 0,
            read: 0,
            max_line,
            max_body,
            ended: false,
        }
    }

    async fn next(&mut self) -> Result<Option<(u64, Bytes)>, ApiError> {
        loop {
            let Some(line) = self.take_line()? else {
                if self.ended {
                    return Ok(None);
                }
                self.read_chunk().await?;
                continue;
            };
            let number = self.taken;
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some((number, line)));
            }
        }
    }

    /// The next whole line in the buffer, without its line end; the rest of the buffer once
    /// the body has ended.
    fn take_line(&mut self) -> Result<Option<Bytes>, ApiError> {
        // memchr scans a word at a time; a byte-by-byte search was a quarter of reading a suite.
        let end = memchr::memchr(b'\n', &self.buffer[self.searched..]).map(|at| self.searched + at);
        let length = end.unwrap_or(self.buffer.len());
        if length > self.max_line {
            self.ended = true;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!(
                    "line {} is longer than {} bytes, more than any case may need",
                    self.taken + 1,
                    self.max_line
                ),
            ));
        }
        let mut line = match end {
            Some(end) => {
                let line = self.buffer.split_to(end + 1).freeze();
                line.slice(..end)
            }
            None if self.ended && !self.buffer.is_empty() => self.buffer.split().freeze(),
            None => {
                self.searched = self.buffer.len();
                return Ok(None);
            }
        };
        self.searched = 0;
        self.taken += 1;
        if line.ends_with(b"\r") {
            line.truncate(line.len() - 1);
        }
        Ok(Some(line))
    }

    async fn read_chunk(&mut self) -> Result<(), ApiError> {
        match self.chunks.next().await {
            None => self.ended = true,
            Some(Err(e)) => {
                self.ended = true;
                return Err(extract::timed_out(&e).unwrap_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidBody,
                        format!("the body could not be read: {e}"),
                    )
                }));
            }
            Some(Ok(chunk)) => {
                self.read += chunk.len() as u64;
                if self.read > self.max_body {
                    self.ended = true;
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::TooLarge,
                        format!(
                            "the suite is more than {} bytes, at most {} allowed",
                            self.max_body, self.max_body
                        ),
                    ));
                }
                self.buffer.extend_from_slice(&chunk);
            }
        }
        Ok(())
    }

    /// Reads what is left of the body and drops it, as far as `max_body` allows.
    async fn discard_rest(&mut self) {
        self.buffer = BytesMut::new();
        while !self.ended {
            match self.chunks.next().await {
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    self.ended = self.read > self.max_body;
                }
                None | Some(Err(_)) => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&'static [u8]], max_line: usize) -> Lines {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Lines::new(
            Body::from_stream(futures_util::stream::iter(chunks)),
            max_line,
            1 << 20,
        )
    }

    async fn all(mut lines: Lines) -> Result<Vec<(u64, String)>, ApiError> {
        let mut out = Vec::new();
        while let Some((n, line)) = lines.next().await? {
            out.push((n, String::from_utf8_lossy(&line).into_owned()));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn lines_are_numbered_across_chunks_blank_ones_counted_but_not_given() {
        let lines = lines_of(&[b"{\"a\":", b"1}\r\n\n  \n{\"b\"", b":2}\n{\"c\":3}"], 64);
        let got = all(lines).await.expect("lines");
        assert_eq!(
            got,
            [
                (1, "{\"a\":1}".to_owned()),
                (4, "{\"b\":2}".to_owned()),
                (5, "{\"c\":3}".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_cap_is_refused_by_its_number_before_its_end_arrives() {
        let lines = lines_of(&[b"short\n", b"0123456789", b"0123456789"], 12);
        let refused = all(lines).await.expect_err("too long");
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            refused
                .message
                .starts_with("line 2 is longer than 12 bytes"),
            "{}",
            refused.message
        );
    }
}
