//! The client half of the `kiln` command line: `submit`, `status`, `events`, `watch`, `cancel`,
//! `list` and `batch`, spoken to a kiln server over its v1 HTTP API.
//!
//! It deliberately knows nothing of the server's Rust types: it reads answers as plain JSON, so a
//! client built from one version still talks to a server of another, and `--json` can pass the
//! server's answer through untouched. This file owns the subcommands' flags and says what each
//! command concludes (whether the job succeeded; `main` makes it the exit code); `api` makes
//! the HTTP calls, `show` turns answers into lines a person can read (`paint` colours them on a
//! terminal), `submit` builds a job from a file, `watch` and `stream` follow a job live, `batch`
//! runs test suites and reads them back, `list` lists jobs and batches, `interrupt` handles
//! Ctrl-C while a command waits.
//!
//! Job and batch ids look alike, so `status`, `events` and `cancel` ask for a job first and for
//! a batch when there is no such job.

mod api;
mod batch;
mod download;
mod interrupt;
mod list;
mod paint;
mod show;
mod stream;
mod submit;
mod watch;

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::cli::{self, Conclusion, Format, note};
use api::{Api, job_id};
use interrupt::Interrupt;
use show::{event_line, job_line, print_json, print_stdout, show_job};
use stream::Step;
use submit::{Limits, Submission, read_input, runtime_for};
use watch::is_not_found;

/// The flags every client subcommand takes: which server, with what token, printing how. Global,
/// so they may come anywhere after the subcommand's name.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientOpts {
    /// Server URL
    #[arg(long, env = "KILN_URL", default_value_t = cli::default_url(), global = true)]
    pub url: String,
    #[command(flatten)]
    pub format: Format,
    /// API token, for a server that requires one (`kiln token create`)
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// `--wait [SECS]`, the same on every command that waits: alone, until the end; with a number,
/// at most that many seconds.
type Wait = Option<Option<u64>>;

/// When a `--wait` gives up: `None` without one, `Some(None)` never.
fn deadline(wait: Wait) -> Option<Option<Instant>> {
    wait.map(|secs| secs.map(|secs| Instant::now() + Duration::from_secs(secs)))
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Submit a file as a job
    Submit {
        /// The program to run; its contents are sent as the job's code (`-`: read from stdin)
        file: PathBuf,
        /// Runtime to run it with [default: from the file's shebang line, else its extension,
        /// as `kiln runtimes` lists them]
        #[arg(long)]
        runtime: Option<String>,
        /// File whose contents are fed to the job's standard input (`-`: this command's stdin)
        #[arg(long, value_name = "FILE")]
        stdin: Option<PathBuf>,
        /// A file put beside the program: PATH under its own name, or NAME=PATH (repeat for
        /// several)
        #[arg(long = "file", value_name = "[NAME=]PATH")]
        files: Vec<String>,
        /// Queued jobs with a higher priority run first [default: 0]
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// Runs kiln may start, should it lose one (a server that died) [default: the server's]
        #[arg(long)]
        max_attempts: Option<u32>,
        /// URL the server POSTs the finished job to (docs/webhooks.md)
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
        /// Wait for the job to end (at most SECS seconds, if given) and show its result
        #[arg(long, value_name = "SECS", num_args = 0..=1, conflicts_with = "watch")]
        wait: Option<Option<u64>>,
        /// Follow the job live once submitted, as `kiln watch` does
        #[arg(long)]
        watch: bool,
        /// Submitting again with the same key returns the first job instead of a new one
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Argument passed to the program (repeat for several)
        #[arg(long = "arg", allow_hyphen_values = true)]
        args: Vec<String>,
        /// A path or glob of files to keep from the run, for `status --download` (repeatable)
        #[arg(long = "keep", value_name = "GLOB")]
        outputs: Vec<String>,
        /// Wall-clock limit in milliseconds
        #[arg(long)]
        wall_ms: Option<u64>,
        /// CPU-time limit in milliseconds
        #[arg(long)]
        cpu_ms: Option<u64>,
        /// Memory limit in MiB
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Limit on the processes and threads the job may run at once
        #[arg(long)]
        processes: Option<u64>,
        /// Limit on each of stdout and stderr, in bytes
        #[arg(long)]
        output_bytes: Option<u64>,
        /// Limit on the size of each file the job writes, in bytes
        #[arg(long)]
        file_bytes: Option<u64>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a job and its result, or a batch and its summary; exits 0 only if the job succeeded
    /// (for a suite's case: if it passed; for a batch: if every case passed)
    Status {
        /// The job's or the batch's id
        id: String,
        /// Wait for it to end (at most SECS seconds, if given)
        #[arg(long, value_name = "SECS", num_args = 0..=1)]
        wait: Option<Option<u64>>,
        /// Write the files the job kept from its run (its `outputs`) into this directory
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a job's or a batch's events, or the global feed (its newest events)
    Events {
        /// The job or batch whose events to show; without it, the global feed
        id: Option<String>,
        /// Global feed: the events after this event id, oldest first
        #[arg(long, conflicts_with = "id")]
        after: Option<i64>,
        /// Global feed: at most this many events
        #[arg(long, default_value_t = 100, conflicts_with = "id")]
        limit: u32,
        /// Go on printing events as they happen (Ctrl-C to stop); a job's or batch's ends with it
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Follow a job live until it ends: its output on stdout and stderr from the run's start,
    /// its events and progress on stderr; exits like `status` with the final state. Given a
    /// batch id, follow the batch: each case's verdict as it ends, then the summary; exits like
    /// `batch --wait`
    Watch {
        /// The job's or the batch's id
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Cancel a queued or running job, or every case of a batch that has not ended
    Cancel {
        /// The job's or the batch's id
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List the runtimes the server offers: name, version, aliases, file extensions, default
    /// limits
    Runtimes {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List jobs or batches, newest first
    List {
        #[arg(value_enum, default_value_t = list::What::Jobs)]
        what: list::What,
        /// Jobs: only those in this status (queued, running, succeeded, failed, ...)
        #[arg(long)]
        status: Option<String>,
        /// Jobs: only those that ended with this outcome (success, nonzero_exit,
        /// wall_time_limit, ...)
        #[arg(long)]
        outcome: Option<String>,
        /// Jobs: only those of this runtime
        #[arg(long)]
        runtime: Option<String>,
        /// Jobs: only the cases of this batch
        #[arg(long, value_name = "ID")]
        batch: Option<String>,
        /// Only this tenant's (an admin's token; a tenant's lists are always its own)
        #[arg(long)]
        tenant: Option<String>,
        /// Jobs: only those submitted at or after this time (RFC 3339 UTC,
        /// 2026-12-03T08:00:00Z)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Jobs: only those submitted before this time (RFC 3339 UTC)
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The page after the last one: those older than this id
        #[arg(long, value_name = "ID")]
        before: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Submit a test suite (a JSON file in the shape of POST /v1/batches, or one of lines ending
    /// in .ndjson or .jsonl, sent as a stream; docs/suites.md), or work on a batch: `kiln batch
    /// cancel|report|cases ID`
    Batch(batch::BatchArgs),
}

/// Everything that can stop a client command. `main` prints it and exits 2; the variants separate
/// "you asked for something impossible" from "the server could not be reached" from "the server
/// said no", should a caller want to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line asks for something we cannot do (unknown runtime, malformed URL, ...).
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {}: {source}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    WriteFile { path: PathBuf, source: io::Error },
    /// No answer: connection refused, DNS failure, timeout. `detail` holds reqwest's whole cause
    /// chain, since its top-level message alone ("error sending request") says nothing useful.
    #[error("cannot reach the kiln server at {url}: {detail}{}", hint(.detail))]
    Unreachable { url: String, detail: String },
    /// The server answered with an HTTP error.
    #[error("{}", api_message(*.status, .code.as_deref(), .message))]
    Api {
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
    /// Something answered, but not as kiln does: another program on that port, or a proxy.
    #[error(
        "{url} does not look like a kiln server: it answered {detail}; check --url or KILN_URL"
    )]
    NotKiln { url: String, detail: String },
    /// The server answered 2xx with something that is not the JSON we expect.
    #[error("unexpected answer from {url}: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
}

/// What to try when nothing answers.
fn hint(detail: &str) -> &'static str {
    if detail.contains("Connection refused") {
        "; is `kiln serve` running there? Pass --url or set KILN_URL to reach another server"
    } else {
        ""
    }
}

fn api_message(status: StatusCode, code: Option<&str>, message: &str) -> String {
    let said = match code {
        Some(code) => format!("server answered {status}: {message} ({code})"),
        None => format!("server answered {status}: {message}"),
    };
    // The server speaks HTTP ("send Authorization: Bearer"); the person at the command line
    // needs the flag.
    match status {
        StatusCode::UNAUTHORIZED => format!(
            "{said}; pass --token or set KILN_TOKEN (an operator makes one with `kiln token create`)"
        ),
        _ => said,
    }
}

impl ClientCommand {
    fn opts(&self) -> &ClientOpts {
        use ClientCommand::*;
        match self {
            Submit { opts, .. }
            | Status { opts, .. }
            | Events { opts, .. }
            | Watch { opts, .. }
            | Cancel { opts, .. }
            | Runtimes { opts }
            | List { opts, .. } => opts,
            Batch(args) => &args.opts,
        }
    }
}

/// Runs one client subcommand and returns what it concluded (see the module doc).
pub async fn run(cmd: ClientCommand) -> Result<Conclusion, ClientError> {
    let opts = cmd.opts();
    let api = Api::new(&opts.url, opts.token.as_deref())?;
    let json = opts.format.json;
    match cmd {
        ClientCommand::Submit {
            file,
            runtime,
            stdin,
            files,
            priority,
            max_attempts,
            callback_url,
            wait,
            watch,
            idempotency_key,
            args,
            outputs,
            wall_ms,
            cpu_ms,
            memory_mb,
            processes,
            output_bytes,
            file_bytes,
            ..
        } => {
            let code = read_input(&file)?;
            let runtime = match runtime {
                Some(runtime) => runtime,
                // Only its `#!` line is looked at, which is text if the file has one.
                None => {
                    let text = String::from_utf8_lossy(code.as_bytes());
                    runtime_for(&file, &text, &api.runtimes().await?)?
                }
            };
            if stdin.is_none() && file != std::path::Path::new("-") {
                submit::warn_if_stdin_is_piped();
            }
            let submission = Submission {
                runtime,
                code,
                stdin: stdin.as_deref().map(read_input).transpose()?,
                args,
                files: submit::read_files(&files)?,
                outputs,
                limits: Limits {
                    wall_ms,
                    cpu_ms,
                    memory_mb,
                    processes,
                    output_bytes,
                    file_bytes,
                },
                priority,
                max_attempts,
                callback_url,
            };
            // Before the submit: a Ctrl-C during it then still gets the id shown.
            let waits = wait.is_some() || watch;
            let mut interrupt = waits.then(Interrupt::listen).transpose()?;
            let accepted = api.submit(&submission, idempotency_key.as_deref()).await?;
            let Some(interrupt) = &mut interrupt else {
                if json {
                    print_json(&accepted)?;
                } else {
                    let id = job_id(&accepted, &api.base)?;
                    print_stdout(|out| writeln!(out, "{id}"))?;
                }
                return Ok(Conclusion::Success);
            };
            let id = job_id(&accepted, &api.base)?;
            if watch {
                note(&format!("job {id} submitted; watching it"));
                let watched = interrupt.guard("the job", id, watch::watch(&api, id, json));
                return Ok(watched.await?.unwrap_or(Conclusion::Interrupted));
            }
            note(&format!("job {id} submitted; waiting for it to end"));
            let until = deadline(wait).flatten();
            let job = match interrupt
                .guard("the job", id, api.wait_job(id, until))
                .await
            {
                Ok(Some(job)) => job,
                Ok(None) => return Ok(Conclusion::Interrupted),
                Err(err) => {
                    // The job is queued and will run regardless; without its id the user could not
                    // find the result.
                    note(&format!(
                        "job {id} was submitted; see it with `kiln status {id}`"
                    ));
                    return Err(err);
                }
            };
            show_job(&job, json)?;
            Ok(conclusion(&job))
        }
        ClientCommand::Status {
            id, wait, download, ..
        } => {
            let job = match deadline(wait) {
                None => api.get_job(&id, None).await,
                Some(until) => api.wait_job(&id, until).await,
            };
            match job {
                Ok(job) => {
                    show_job(&job, json)?;
                    if let Some(dir) = download {
                        let written = download::download(&api, &job, &dir).await?;
                        let files = if written == 1 { "file" } else { "files" };
                        note(&format!("wrote {written} {files} to {}", dir.display()));
                    }
                    Ok(conclusion(&job))
                }
                Err(err) if is_not_found(&err, "job_not_found") => {
                    batch::status(&api, &id, deadline(wait), json).await
                }
                Err(err) => Err(err),
            }
        }
        ClientCommand::Events {
            id,
            after,
            limit,
            follow,
            ..
        } => events(&api, id.as_deref(), after, limit, follow, json).await,
        ClientCommand::Watch { id, .. } => {
            let mut interrupt = Interrupt::listen()?;
            let watched = interrupt.guard("the job or batch", &id, watch::watch(&api, &id, json));
            Ok(watched.await?.unwrap_or(Conclusion::Interrupted))
        }
        ClientCommand::Batch(args) => batch::run(&api, json, args).await,
        ClientCommand::Cancel { id, .. } => match api.cancel(&id).await {
            Ok(job) => {
                if json {
                    print_json(&job)?;
                } else {
                    print_stdout(|out| writeln!(out, "{}", job_line(&job)))?;
                }
                Ok(Conclusion::Success)
            }
            Err(err) if is_not_found(&err, "job_not_found") => batch::cancel(&api, &id, json).await,
            Err(err) => Err(err),
        },
        ClientCommand::List {
            what,
            status,
            outcome,
            runtime,
            batch,
            since,
            until,
            tenant,
            limit,
            before,
            ..
        } => {
            let filters = list::Filters {
                status,
                outcome,
                runtime,
                batch,
                since,
                until,
                tenant,
                limit,
                before,
            };
            list::list(&api, what, filters, json).await
        }
        ClientCommand::Runtimes { .. } => {
            let listing = api.runtimes().await?;
            if json {
                print_json(&listing)?;
            } else {
                print_stdout(|out| show::runtimes(out, &listing))?;
            }
            Ok(Conclusion::Success)
        }
    }
}

/// `kiln events`: a job's or a batch's events, or the global feed; with `--follow`, live.
async fn events(
    api: &Api,
    id: Option<&str>,
    after: Option<i64>,
    limit: u32,
    follow: bool,
    json: bool,
) -> Result<Conclusion, ClientError> {
    let (feed, segments) = match id {
        Some(id) => match api.job_events(id).await {
            Ok(feed) => (feed, vec!["jobs", id, "events"]),
            Err(err) if is_not_found(&err, "job_not_found") => {
                (api.batch_events(id).await?, vec!["batches", id, "events"])
            }
            Err(err) => return Err(err),
        },
        None => (api.global_events(after, limit).await?, vec!["events"]),
    };
    let events = feed
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| ClientError::BadResponse {
            url: api.base.to_string(),
            detail: "no \"events\" list in the answer".to_owned(),
        })?;
    // The newest page comes newest first; a person reads the feed in time order.
    let mut events: Vec<&Value> = events.iter().collect();
    if feed.get("next_before").is_some() {
        events.reverse();
    }
    // Only a job's own list has no job column: the rest mix jobs.
    let with_job = segments[0] != "jobs";
    let show = |event: &Value| -> Result<(), ClientError> {
        match json {
            true => print_stdout(|out| writeln!(out, "{event}")),
            false => print_stdout(|out| writeln!(out, "{}", event_line(event, with_job))),
        }
    };
    if json && !follow {
        print_json(&feed)?;
    } else {
        for event in &events {
            show(event)?;
        }
    }
    if !follow {
        if id.is_none()
            && after.is_some()
            && events.len() >= limit as usize
            && let Some(next) = feed.get("next_after").and_then(Value::as_i64)
        {
            note(&format!("more events may follow: use --after {next}"));
        }
        return Ok(Conclusion::Success);
    }
    // Follows on from the last event shown, so none comes twice.
    let last = events
        .last()
        .and_then(|event| event.get("id"))
        .and_then(Value::as_i64)
        .unwrap_or(after.unwrap_or(0));
    let followed = stream::follow_from(api, &segments, last, |step| {
        let Step::Message(message, data) = step else {
            return Ok(false);
        };
        if message.id.is_none() {
            return Ok(false);
        }
        show(data)?;
        Ok(match segments[0] {
            "jobs" => watch::is_terminal_event(&message.event),
            "batches" => message.event == "batch.completed",
            _ => false,
        })
    })
    .await?;
    match followed {
        stream::Followed::Ended => Ok(Conclusion::Success),
        stream::Followed::Refused(err) => Err(err),
    }
}

/// Success for a job that succeeded; for a suite's case, for a case that passed (a wrong answer
/// exits 0 but fails its case); pending for one that has not ended.
fn conclusion(job: &Value) -> Conclusion {
    if !api::is_terminal(job) {
        return Conclusion::Pending;
    }
    let passed = match job.get("verdict").and_then(Value::as_str) {
        Some(verdict) => verdict == "passed",
        None => {
            job.get("case_name").is_none()
                && job.get("status").and_then(Value::as_str) == Some("succeeded")
        }
    };
    match passed {
        true => Conclusion::Success,
        false => Conclusion::Failure,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use api::is_terminal;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    #[test]
    fn exit_code_and_terminality_follow_the_status() {
        for (status, terminal, success) in [
            ("queued", false, false),
            ("running", false, false),
            ("succeeded", true, true),
            ("failed", true, false),
            ("timed_out", true, false),
            ("cancelled", true, false),
            ("error", true, false),
        ] {
            let job = json!({ "status": status });
            assert_eq!(is_terminal(&job), terminal, "{status}");
            let expected = match (terminal, success) {
                (false, _) => Conclusion::Pending,
                (true, true) => Conclusion::Success,
                (true, false) => Conclusion::Failure,
            };
            assert_eq!(conclusion(&job), expected, "{status}");
        }
    }
    #[test]
    fn a_case_concludes_by_its_verdict_not_its_exit() {
        let case = |status: &str, verdict: Option<&str>| json!({"status": status, "case_name": "t1", "verdict": verdict});
        assert_eq!(
            conclusion(&case("succeeded", Some("passed"))),
            Conclusion::Success
        );
        assert_eq!(
            conclusion(&case("succeeded", Some("wrong_answer"))),
            Conclusion::Failure
        );
        assert_eq!(
            conclusion(&case("failed", Some("runtime_error"))),
            Conclusion::Failure
        );
        // Not judged yet: neither passed nor failed.
        let running = json!({"status": "running", "case_name": "t1"});
        assert_eq!(conclusion(&running), Conclusion::Pending);
    }
    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "kiln",
            "submit",
            "x.py",
            "--arg",
            "-n",
            "--arg",
            "2",
            "--wall-ms",
            "500",
            "--wait",
            "--json",
        ]);
        match cli.map(|cli| (cli.cmd.opts().format.json, cli.cmd)) {
            Ok((
                true,
                ClientCommand::Submit {
                    args,
                    wall_ms,
                    wait,
                    ..
                },
            )) => {
                assert_eq!(args, ["-n", "2"]);
                assert_eq!(wall_ms, Some(500));
                assert_eq!(wait, Some(None));
            }
            other => panic!("{other:?}"),
        }
        // The default --limit must not count as given alongside a job id.
        assert!(Cli::try_parse_from(["kiln", "events", "j1"]).is_ok());
        assert!(Cli::try_parse_from(["kiln", "events", "j1", "--after", "3"]).is_err());
    }
}
