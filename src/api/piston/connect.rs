//! `GET /api/v2/connect`: Piston's interactive WebSocket. The client's `init` (within a second,
//! else `4001`) is read as an execute request and stored as an interactive job; the server
//! answers `runtime`, then each `stage`, the program's output as `data` as it is written (the
//! job's live output), and each stage's `exit`, and closes with `4999 Job Completed`. The
//! client's `data` on `stdin` goes to the running program's stdin, and a `signal` kills it
//! (kiln kills a run as a whole, so every signal is delivered as `SIGKILL`). Mistakes close
//! the socket with Piston's codes: 4000 a second init, 4002 after an `error` message, 4003 data
//! or a signal before init, 4004 data for another stream, 4005 an unknown signal. However the
//! session ends, the program's stdin is closed (it reads EOF) and the job runs on to its end.
//!
//! Output the socket did not see live (a run over before the socket watched it, or a socket
//! that fell behind) is sent from the job's stored output before the `exit`.
//!
//! A compiled runtime's build is not streamed (kiln shows its output only when it fails): its
//! `compile` stage ends when the run's output begins, or with the job.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::stages::{self, chunk_bytes};
use super::{AppState, PistonError, submit};
use crate::api::jobs::wait_for_end;
use crate::auth::Principal;
use crate::job::{Job, JobId, Outcome};
use crate::live::{OutputChunk, OutputWatch, Stream};
use crate::store::CancelResult;

/// How long a client has to send `init`.
const INIT_WAIT: Duration = Duration::from_secs(1);
/// How long a stdin write waits for the program to read what came before it.
const STDIN_WAIT: Duration = Duration::from_secs(10);
/// Longer than any run may last: the job's own limits end it first.
const RUN_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Takes one of the live streams' places (`--sse-max-streams`) for as long as the socket is
/// open, and takes messages as large as a request body may be.
pub async fn upgrade(
    State(state): State<AppState>,
    principal: Principal,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(place) = Arc::clone(&state.streams).try_acquire_owned() else {
        return PistonError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "too many live streams are open; try again later".into(),
        }
        .into_response();
    };
    ws.max_message_size(state.config.max_request_bytes)
        .on_upgrade(move |socket| async move {
            Session::new(socket, state, principal).run().await;
            drop(place);
        })
}

/// The job an `init` started, and how far its stages got on the socket.
struct Started {
    id: JobId,
    compiled: bool,
    /// The `run` stage was announced (for a compiled runtime, once its build ended).
    running: bool,
    /// Bytes of stdout and stderr sent as `data`.
    sent: [usize; 2],
}

struct Session {
    socket: WebSocket,
    state: AppState,
    principal: Principal,
    /// The job `init` started, whose stdin closes with the session.
    job: Option<JobId>,
}

/// Why a session ends.
enum End {
    /// Closed with this code and reason.
    Close(u16, &'static str),
    /// An `error` message, then `4002`.
    Error(String),
    /// The client went away.
    Gone,
}

impl Session {
    fn new(socket: WebSocket, state: AppState, principal: Principal) -> Session {
        Session {
            socket,
            state,
            principal,
            job: None,
        }
    }

    async fn run(mut self) {
        let end = self.converse().await;
        if let Some(id) = self.job {
            // However the session ends, a program reading its stdin reads EOF and ends.
            self.state.live.stdins().close(id).await;
        }
        match end {
            End::Close(code, reason) => self.close(code, reason).await,
            End::Error(message) => {
                let _ = self
                    .send(json!({"type": "error", "message": message}))
                    .await;
                self.close(4002, "Notified Error").await;
            }
            End::Gone => {}
        }
    }

    async fn converse(&mut self) -> End {
        let deadline = Instant::now() + INIT_WAIT;
        let (started, mut watch) = loop {
            let message = tokio::select! {
                message = self.socket.recv() => message,
                () = tokio::time::sleep_until(deadline) => {
                    return End::Close(4001, "Initialization Timeout");
                }
            };
            let Some(message) = read(message) else {
                return End::Gone;
            };
            let message = match message {
                Ok(message) => message,
                Err(why) => return End::Error(why),
            };
            match message["type"].as_str() {
                Some("init") => match self.init(&message).await {
                    Ok(started) => break started,
                    Err(end) => return end,
                },
                Some("data" | "signal") => return End::Close(4003, "Not yet Initialized"),
                _ => {}
            }
        };
        let mut started = started;
        let state = self.state.clone();
        let ended = wait_for_end(&state, started.id, RUN_WAIT);
        tokio::pin!(ended);
        loop {
            tokio::select! {
                job = &mut ended => {
                    let end = match job {
                        Ok(job) => self.finish(&mut started, &mut watch, &job).await,
                        Err(e) => End::Error(e.message),
                    };
                    return end;
                }
                chunk = watch.receiver.recv() => {
                    // Lagged: some output was missed on the socket (the job keeps all of it).
                    if let Ok(chunk) = chunk
                        && self.data(&mut started, &chunk).await.is_err()
                    {
                        return End::Gone;
                    }
                }
                message = self.socket.recv() => {
                    let Some(message) = read(message) else {
                        return End::Gone;
                    };
                    let message = match message {
                        Ok(message) => message,
                        Err(why) => return End::Error(why),
                    };
                    if let Some(end) = self.command(started.id, &message).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Starts the job an `init` asks for, and answers `runtime` and the first `stage`.
    async fn init(&mut self, message: &Value) -> Result<(Started, OutputWatch), End> {
        let (id, execution) = submit(&self.state, &self.principal, message, true)
            .await
            .map_err(|e| End::Error(e.message))?;
        self.job = Some(id);
        let watch = self.state.live.watch_output(id);
        let runtime = json!({
            "type": "runtime",
            "language": execution.language,
            "version": execution.version,
        });
        let first = match execution.compiled {
            true => "compile",
            false => "run",
        };
        let sent = async {
            self.send(runtime).await?;
            self.send(json!({"type": "stage", "stage": first})).await
        };
        if sent.await.is_err() {
            return Err(End::Gone);
        }
        let mut started = Started {
            id,
            compiled: execution.compiled,
            running: !execution.compiled,
            sent: [0, 0],
        };
        for chunk in watch.replay.clone() {
            if self.data(&mut started, &chunk).await.is_err() {
                return Err(End::Gone);
            }
        }
        Ok((started, watch))
    }

    /// A client's message once the job runs; `Some` when it ends the session.
    async fn command(&mut self, id: JobId, message: &Value) -> Option<End> {
        match message["type"].as_str() {
            Some("init") => Some(End::Close(4000, "Already Initialized")),
            Some("data") if message["stream"] == "stdin" => {
                let data = message["data"].as_str().unwrap_or_default().to_owned();
                let write = self.state.live.stdins().write(id, Bytes::from(data), false);
                match tokio::time::timeout(STDIN_WAIT, write).await {
                    Ok(Ok(())) => None,
                    Ok(Err(refused)) => Some(End::Error(refused.to_string())),
                    Err(_) => Some(End::Error(
                        "the program is not reading its stdin".to_owned(),
                    )),
                }
            }
            Some("data") => Some(End::Close(4004, "Can only write to stdin")),
            Some("signal") => match message["signal"].as_str() {
                Some(signal) if stages::is_signal(signal) => {
                    self.kill(id).await;
                    None
                }
                _ => Some(End::Close(4005, "Invalid signal")),
            },
            _ => None,
        }
    }

    /// Kills the run: the job is cancelled, as `POST /v1/jobs/{id}/cancel` cancels it.
    async fn kill(&mut self, id: JobId) {
        match self.state.store.cancel(id).await {
            Ok(CancelResult::Cancelled {
                running_attempt: Some(attempt),
            }) => {
                self.state.running.stop(id, attempt);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(job = %id, error = %e, "could not cancel for a signal"),
        }
    }

    /// Output of the run, after the `run` stage is announced.
    async fn data(&mut self, started: &mut Started, chunk: &OutputChunk) -> Result<(), ()> {
        self.output(started, chunk.stream, &chunk_bytes(chunk))
            .await
    }

    async fn output(
        &mut self,
        started: &mut Started,
        stream: Stream,
        bytes: &[u8],
    ) -> Result<(), ()> {
        if !started.running {
            self.send(json!({"type": "exit", "stage": "compile", "code": 0, "signal": null}))
                .await?;
            self.send(json!({"type": "stage", "stage": "run"})).await?;
            started.running = true;
        }
        started.sent[stream as usize] += bytes.len();
        let data = String::from_utf8_lossy(bytes).into_owned();
        self.send(json!({"type": "data", "stream": stream, "data": data}))
            .await
    }

    /// The job ended: what output is left, each stage's `exit`, and `4999`.
    async fn finish(&mut self, started: &mut Started, watch: &mut OutputWatch, job: &Job) -> End {
        if !job.status.is_terminal() {
            return End::Error("the server is shutting down".to_owned());
        }
        if started.compiled && !started.running && job.outcome == Some(Outcome::CompileError) {
            // The build failed: its output is the job's, and there is no run.
            for (stream, text) in [("stdout", &job.stdout), ("stderr", &job.stderr)] {
                if !text.is_empty()
                    && self
                        .send(json!({"type": "data", "stream": stream, "data": text}))
                        .await
                        .is_err()
                {
                    return End::Gone;
                }
            }
            if self.send(stages::exit(job, "compile")).await.is_err() {
                return End::Gone;
            }
            return End::Close(4999, "Job Completed");
        }
        while let Ok(chunk) = watch.receiver.try_recv() {
            if self.data(started, &chunk).await.is_err() {
                return End::Gone;
            }
        }
        // What the socket did not see live (it joined after the run, or fell behind), from the
        // job's stored output.
        for (stream, text, encoding) in [
            (Stream::Stdout, &job.stdout, job.stdout_encoding),
            (Stream::Stderr, &job.stderr, job.stderr_encoding),
        ] {
            let stored = stages::stream_bytes(text, encoding);
            let sent = started.sent[stream as usize];
            if stored.len() > sent && self.output(started, stream, &stored[sent..]).await.is_err() {
                return End::Gone;
            }
        }
        if !started.running {
            let announced = async {
                self.send(json!({"type": "exit", "stage": "compile", "code": 0, "signal": null}))
                    .await?;
                self.send(json!({"type": "stage", "stage": "run"})).await
            };
            if announced.await.is_err() {
                return End::Gone;
            }
        }
        if self.send(stages::exit(job, "run")).await.is_err() {
            return End::Gone;
        }
        End::Close(4999, "Job Completed")
    }

    async fn send(&mut self, message: Value) -> Result<(), ()> {
        self.socket
            .send(Message::Text(Utf8Bytes::from(message.to_string())))
            .await
            .map_err(|_| ())
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
}

/// A client's message as JSON; `None` when the client is gone, `Err` for what is not JSON.
fn read(message: Option<Result<Message, axum::Error>>) -> Option<Result<Value, String>> {
    let text = match message? {
        Ok(Message::Text(text)) => text.as_str().to_owned(),
        Ok(Message::Binary(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(Message::Close(_)) | Err(_) => return None,
        // Pings are answered by the socket itself; as no `type`, they are ignored.
        Ok(Message::Ping(_) | Message::Pong(_)) => return Some(Ok(Value::Null)),
    };
    Some(serde_json::from_str(&text).map_err(|e| e.to_string()))
}
