//! Live streams: the event endpoints answer `Accept: text/event-stream` with Server-Sent Events.
//!
//! A stream sends the stored history after the client's resume point (`Last-Event-ID`, or
//! `?after=`), then each event as it commits, every one as an SSE message whose `id:` is the
//! event id and whose `event:` is its type. It subscribes to live events *before* reading the
//! history and skips ids it already sent, so nothing falls between the two and nothing comes
//! twice. A job's stream also carries the job's output while it runs (`event: output`, no id:
//! output is not stored piecewise and cannot be resumed) — from the run's start, however late
//! the stream begins — and ends after the job's terminal event.
//!
//! Each stream is a task writing into a buffer of at most `sse_buffer_bytes` that the response
//! body drains at the client's pace. An event waits for room, but at most `sse_stall`: a client
//! that has not made room by then is too far behind, and its stream ends with `event: dropped`
//! naming the last event id sent, to resume from. Output and keep-alives never wait: a chunk
//! that finds no room is skipped, and the next one that fits is preceded by `event:
//! output.lost` with the number skipped (the whole output is in the job's result). Nothing a
//! client does, or fails to do, reaches the workers or the writer; the task holds only the
//! fixed buffer and a cursor, as missed events are read again from the database by id. Streams
//! end when the server begins to stop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::job::content::Encoding;
use crate::job::{BatchId, Event, EventKind, JobId};
use crate::live::{LiveEvent, OutputChunk, OutputWatch};
use crate::store::{StoreError, Visibility};

/// History rows read at a time.
const PAGE: u32 = 1000;

/// Output chunks a stream holds while it waits to send their run's `job.started`: on
/// PostgreSQL a node hears of its own commits through the database a moment after they
/// commit, while a run's output comes straight from the run, so the first pieces can come
/// first. Past this many, they count as lost.
const EARLY_CHUNKS: usize = 256;

/// True if the client asked for an event stream rather than JSON.
pub(super) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Where a stream resumes: after `Last-Event-ID` (what an EventSource sends when it
/// reconnects), else after `?after=`, else from the beginning.
pub(super) fn resume_point(headers: &HeaderMap, after: Option<i64>) -> Result<i64, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(after.unwrap_or(0).max(0));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidHeader,
                "Last-Event-ID must be an event id",
            )
        })
}

/// Which events a stream carries, and which one ends it.
#[derive(Clone)]
enum Scope {
    Job(JobId),
    /// The batch's own events and its cases', up to `batch.completed`.
    Batch(BatchId),
    /// The feed: every event the caller may see.
    Feed(Visibility),
}

impl Scope {
    fn includes(&self, event: &Event) -> bool {
        match self {
            Scope::Job(id) => event.job_id == Some(*id),
            Scope::Batch(id) => event.batch_id == Some(*id),
            Scope::Feed(Visibility::All) => true,
            Scope::Feed(Visibility::Tenant(tenant)) => event.tenant.as_ref() == Some(tenant),
        }
    }

    fn ends_with(&self, event: &Event) -> bool {
        match self {
            Scope::Job(_) => EventKind::parse(&event.kind).is_some_and(EventKind::is_terminal),
            Scope::Batch(_) => EventKind::parse(&event.kind) == Some(EventKind::BatchCompleted),
            Scope::Feed(_) => false,
        }
    }

    /// The next page of history after `after`.
    async fn history(&self, state: &AppState, after: i64) -> Result<Vec<Event>, StoreError> {
        match self {
            Scope::Job(id) => Ok(state
                .store
                .job_events(*id, after)
                .await?
                .unwrap_or_default()),
            Scope::Batch(id) => Ok(state
                .store
                .batch_events(*id, after, PAGE)
                .await?
                .unwrap_or_default()),
            Scope::Feed(who) => state.store.events_after(who.clone(), after, PAGE).await,
        }
    }

    /// The job whose output the stream carries.
    fn job(&self) -> Option<JobId> {
        match self {
            Scope::Job(id) => Some(*id),
            Scope::Batch(_) | Scope::Feed(_) => None,
        }
    }

    /// False if the history just read was all there is (a job's comes in one page).
    fn may_have_more(&self, page: &[Event]) -> bool {
        match self {
            Scope::Job(_) => false,
            Scope::Batch(_) | Scope::Feed(_) => page.len() == PAGE as usize,
        }
    }
}

/// `GET /v1/jobs/{id}/events` as a stream. A job that already ended and whose terminal event
/// the client has seen answers `204`, which tells an EventSource to stop reconnecting.
pub(super) async fn job(state: AppState, id: JobId, after: i64) -> Result<Response, ApiError> {
    let permit = admit(&state)?;
    let events = state.live.events();
    let output = state.live.watch_output(id);
    // Read after subscribing: an end committed after this read arrives live.
    let status = state
        .store
        .job_status(id)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    let scope = Scope::Job(id);
    // From the start, though the stream sends only what follows `after`: what the client had
    // says whether the run it was watching goes on (see `Stream::recall`).
    let first = scope.history(&state, 0).await?;
    // Not "no history left": webhook attempts are events of the job that follow its end.
    if status.is_terminal() && !first.iter().any(|e| e.id > after && scope.ends_with(e)) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(start(
        state,
        scope,
        after,
        first,
        events,
        Some(output),
        permit,
    ))
}

/// `GET /v1/batches/{id}/events` as a stream, ending after `batch.completed`. Resumed after
/// that event, it answers `204`. The cases' output is not carried: it is watched job by job.
pub(super) async fn batch(state: AppState, id: BatchId, after: i64) -> Result<Response, ApiError> {
    let permit = admit(&state)?;
    let events = state.live.events();
    // Read after subscribing: a completion committed after this read arrives live.
    let completed = state
        .store
        .batch_completed_event(id)
        .await?
        .ok_or_else(ApiError::batch_not_found)?;
    // Compared with the completion's id, not with "is there more history": events of the
    // batch may follow its completion (webhook attempts), and they must not reopen its stream.
    if completed.is_some_and(|end| end <= after) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let scope = Scope::Batch(id);
    let first = scope.history(&state, after).await?;
    Ok(start(state, scope, after, first, events, None, permit))
}

/// `GET /v1/events` as a stream: every event `who` may see, never ending on its own.
pub(super) async fn feed(
    state: AppState,
    who: Visibility,
    after: i64,
) -> Result<Response, ApiError> {
    let permit = admit(&state)?;
    let events = state.live.events();
    let scope = Scope::Feed(who);
    let first = scope.history(&state, after).await?;
    Ok(start(state, scope, after, first, events, None, permit))
}

fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    Arc::clone(&state.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyStreams,
                "the server has as many live streams open as it allows; try again later",
            )
        })
}

fn start(
    state: AppState,
    scope: Scope,
    after: i64,
    first: Vec<Event>,
    events: broadcast::Receiver<Arc<LiveEvent>>,
    output: Option<OutputWatch>,
    permit: OwnedSemaphorePermit,
) -> Response {
    let budget = state.config.sse_buffer_bytes.max(1);
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(permits(budget, budget)));
    let outbox = Outbox {
        tx,
        room: Arc::clone(&room),
        budget,
        stall: state.config.sse_stall,
    };
    let stream = Stream {
        state,
        scope,
        sent: after,
        events,
        output,
        started: 0,
        running: false,
        early: Vec::new(),
        lost: 0,
        outbox,
    };
    tokio::spawn(async move {
        stream.run(first).await;
        drop(permit);
    });
    let body = futures_util::stream::unfold(rx, move |mut rx| {
        let room = Arc::clone(&room);
        async move {
            let frame: Bytes = rx.recv().await?;
            // Handed to the connection: room for the next one.
            room.add_permits(permits(frame.len(), budget));
            Some((Ok::<_, Infallible>(frame), rx))
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-like proxies not to hold messages back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// What a frame costs of the budget. A frame larger than the whole budget costs the whole
/// budget, so it still goes out once the buffer is empty.
fn permits(len: usize, budget: usize) -> usize {
    len.min(budget).min(Semaphore::MAX_PERMITS)
}

/// Why a stream stopped sending.
enum Stop {
    /// Its client went away, or the server is stopping.
    Closed,
    /// Its client fell further behind than the buffer allows.
    TooSlow,
}

/// The sending half of a stream's bounded buffer.
struct Outbox {
    tx: mpsc::UnboundedSender<Bytes>,
    room: Arc<Semaphore>,
    budget: usize,
    stall: Duration,
}

impl Outbox {
    fn cost(&self, frame: &Bytes) -> u32 {
        u32::try_from(permits(frame.len(), self.budget)).unwrap_or(u32::MAX)
    }

    /// Waits for room, up to the stall limit: events go at the client's pace, within reason.
    async fn send(&self, frame: Bytes) -> Result<(), Stop> {
        let cost = self.cost(&frame);
        let permit = tokio::select! {
            permit = tokio::time::timeout(self.stall, self.room.acquire_many(cost)) => permit,
            () = self.tx.closed() => return Err(Stop::Closed),
        };
        match permit {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return Err(Stop::Closed),
            Err(_) => return Err(Stop::TooSlow),
        }
        self.tx.send(frame).map_err(|_| Stop::Closed)
    }

    /// Sends only if there is room now; false if there was none.
    fn try_send(&self, frame: Bytes) -> Result<bool, Stop> {
        self.try_send_all(vec![frame])
    }

    /// Sends all of `frames` if there is room for all of them now; false, sending none, if
    /// there was not.
    fn try_send_all(&self, frames: Vec<Bytes>) -> Result<bool, Stop> {
        // At most the whole budget, as for one frame, so that they still go once it is empty.
        let whole = u32::try_from(permits(self.budget, self.budget)).unwrap_or(u32::MAX);
        let cost = frames
            .iter()
            .fold(0u32, |sum, frame| sum.saturating_add(self.cost(frame)))
            .min(whole);
        match self.room.try_acquire_many(cost) {
            Ok(permit) => permit.forget(),
            Err(_) => return Ok(false),
        }
        for frame in frames {
            self.tx.send(frame).map_err(|_| Stop::Closed)?;
        }
        Ok(true)
    }

    /// Sends past the budget: only for the last, small message of a stream.
    fn last_word(&self, frame: Bytes) {
        // The client may be gone already; nothing is left to do then.
        let _ = self.tx.send(frame);
    }
}

struct Stream {
    state: AppState,
    scope: Scope,
    /// The last event id sent (or the resume point).
    sent: i64,
    events: broadcast::Receiver<Arc<LiveEvent>>,
    output: Option<OutputWatch>,
    /// The attempt of the last `job.started` sent, and whether its run is still on as far as
    /// the client was told (no `job.retrying` or end sent since).
    started: u32,
    running: bool,
    /// Output of a later attempt than the client has been told of, held until its
    /// `job.started` is sent (at most `EARLY_CHUNKS`).
    early: Vec<Arc<OutputChunk>>,
    /// Output chunks skipped since the last one sent.
    lost: u64,
    outbox: Outbox,
}

impl Stream {
    async fn run(mut self, first: Vec<Event>) {
        let stopping = self.state.stopping.clone();
        let ended = tokio::select! {
            ended = self.serve(first) => ended,
            () = stopping.cancelled() => Err(Stop::Closed),
        };
        if let Err(Stop::TooSlow) = ended {
            let data = json!({
                "reason": "the client fell too far behind; resume after last_event_id",
                "last_event_id": self.sent,
            });
            self.outbox
                .last_word(message(None, "dropped", &data.to_string()));
        }
    }

    /// Ok once the stream has carried its last event.
    async fn serve(&mut self, first: Vec<Event>) -> Result<(), Stop> {
        if self.catch_up(first).await? {
            return Ok(());
        }
        self.replay().await?;
        let mut keepalive = tokio::time::interval(self.state.config.sse_keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        loop {
            tokio::select! {
                received = self.events.recv() => match received {
                    Ok(live) => {
                        if live.event.id <= self.sent || !self.scope.includes(&live.event) {
                            continue;
                        }
                        let frame = live.rendered.get_or_init(|| event_frame(&live.event)).clone();
                        self.outbox.send(frame).await?;
                        self.told(&live.event)?;
                        if self.scope.ends_with(&live.event) {
                            return Ok(());
                        }
                    }
                    // Missed some: the database has them all, by id.
                    Err(RecvError::Lagged(_)) => {
                        if self.catch_up(Vec::new()).await? {
                            return Ok(());
                        }
                    }
                    Err(RecvError::Closed) => return Err(Stop::Closed),
                },
                chunk = recv_output(&mut self.output) => match chunk {
                    Ok(chunk) => self.offer(chunk)?,
                    Err(RecvError::Lagged(skipped)) => self.lost += skipped,
                    Err(RecvError::Closed) => self.output = None,
                },
                _ = keepalive.tick() => {
                    // A stream with no room is not idle: nothing is lost by skipping this one.
                    self.outbox.try_send(Bytes::from_static(b": keep-alive\n\n"))?;
                }
                () = self.outbox.tx.closed() => return Err(Stop::Closed),
            }
        }
    }

    /// Sends stored events after the last one sent, starting with `first` if given; true if
    /// the stream's last event was among them.
    async fn catch_up(&mut self, mut page: Vec<Event>) -> Result<bool, Stop> {
        loop {
            if page.is_empty() {
                page = match self.scope.history(&self.state, self.sent).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "a live stream could not read its history");
                        return Err(Stop::Closed);
                    }
                };
            }
            let more = self.scope.may_have_more(&page);
            for event in page.drain(..) {
                if event.id <= self.sent {
                    self.recall(&event);
                    continue;
                }
                self.outbox.send(event_frame(&event)).await?;
                self.told(&event)?;
                if self.scope.ends_with(&event) {
                    return Ok(true);
                }
            }
            if !more {
                return Ok(false);
            }
        }
    }

    /// Sends what the job's current run wrote before the stream began, at the client's pace
    /// like events: it is bounded, and the start is what a late watcher needs.
    async fn replay(&mut self) -> Result<(), Stop> {
        let Some(watch) = &mut self.output else {
            return Ok(());
        };
        let replay = std::mem::take(&mut watch.replay);
        self.lost += std::mem::take(&mut watch.skipped);
        let job = self.scope.job();
        for chunk in replay {
            if self.running && chunk.attempt == self.started {
                self.outbox.send(output_frame(job, &chunk)).await?;
            } else {
                self.offer(chunk)?;
            }
        }
        Ok(())
    }

    /// Notes an event just sent: the client now knows the job's run started (or ended), and
    /// output held for that run's start follows it.
    fn told(&mut self, event: &Event) -> Result<(), Stop> {
        self.sent = event.id;
        if self.recall(event) {
            for chunk in std::mem::take(&mut self.early) {
                self.offer(chunk)?;
            }
        }
        Ok(())
    }

    /// Takes in what an event the client has (sent now, or before it resumed) says of the
    /// job's run; true if it is the start of one.
    fn recall(&mut self, event: &Event) -> bool {
        match EventKind::parse(&event.kind) {
            Some(EventKind::Started) => {
                self.started = event.attempt.unwrap_or(self.started);
                self.running = true;
                return true;
            }
            Some(EventKind::Retrying) => self.running = false,
            Some(kind) if kind.is_terminal() => self.running = false,
            _ => {}
        }
        false
    }

    /// Sends a chunk of the run the client was last told started, holds one of a later run
    /// until it is told of that, and drops one of a run it has been told is over (a retried
    /// attempt's output is not kept; an ended job's is in its result).
    fn offer(&mut self, chunk: Arc<OutputChunk>) -> Result<(), Stop> {
        if chunk.attempt > self.started {
            if self.early.len() < EARLY_CHUNKS {
                self.early.push(chunk);
            } else {
                self.lost += 1;
            }
            return Ok(());
        }
        if chunk.attempt == self.started && self.running {
            self.send_output(&chunk)?;
        }
        Ok(())
    }

    /// Sends a chunk if it fits now, after saying how many did not fit before it.
    fn send_output(&mut self, chunk: &OutputChunk) -> Result<(), Stop> {
        let job = self.scope.job();
        let mut frames = Vec::with_capacity(2);
        if self.lost > 0 {
            let data = json!({"job_id": job, "chunks": self.lost});
            frames.push(message(None, "output.lost", &data.to_string()));
        }
        frames.push(output_frame(job, chunk));
        if self.outbox.try_send_all(frames)? {
            self.lost = 0;
        } else {
            self.lost += 1;
        }
        Ok(())
    }
}

/// The next output chunk of the watched job; never, for a stream without output.
async fn recv_output(output: &mut Option<OutputWatch>) -> Result<Arc<OutputChunk>, RecvError> {
    match output {
        Some(watch) => watch.receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// An output message: `data` the text, or for bytes that are not UTF-8 their base64, which
/// `"encoding": "base64"` then says (text, the usual case, goes without it).
fn output_frame(job: Option<JobId>, chunk: &OutputChunk) -> Bytes {
    let mut data = json!({
        "job_id": job,
        "attempt": chunk.attempt,
        "stream": chunk.stream,
        "data": chunk.text,
    });
    if chunk.encoding == Encoding::Base64 {
        data["encoding"] = json!(chunk.encoding);
    }
    message(None, "output", &data.to_string())
}

fn event_frame(event: &Event) -> Bytes {
    // An Event always serializes; an empty object would still be a valid message.
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    message(Some(event.id), &event.kind, &data)
}

/// One SSE message. `data` is compact JSON, which never contains a line break.
fn message(id: Option<i64>, kind: &str, data: &str) -> Bytes {
    let mut frame = String::with_capacity(data.len() + kind.len() + 32);
    if let Some(id) = id {
        frame.push_str(&format!("id: {id}\n"));
    }
    frame.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    Bytes::from(frame)
}
