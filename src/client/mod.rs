//! The client half of the `kiln` command line: `submit`, `status`, `events`, `watch`, `cancel` and
//! `batch`, spoken to a kiln server over its v1 HTTP API.
//!
//! It deliberately knows nothing of the server's Rust types: it reads answers as plain JSON, so a
//! client built from one version still talks to a server of another, and `--json` can pass the
//! server's answer through untouched. This file owns the subcommands' flags and says what each
//! command concludes (whether the job succeeded; `main` makes it the exit code); `api` makes
//! the HTTP calls, `show` turns answers into lines a person can read, `submit` builds a job
//! from a file, `watch` and `stream` follow a job live, `batch` runs test suites.

mod api;
mod batch;
mod interrupt;
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
use submit::{Limits, Submission, read_text, runtime_for};

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

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Submit a file as a job
    Submit {
        /// The program to run; its contents are sent as the job's code
        file: PathBuf,
        /// Runtime to run it with [default: from the file's shebang line, else its extension,
        /// as `kiln runtimes` lists them]
        #[arg(long)]
        runtime: Option<String>,
        /// File whose contents are fed to the job's standard input
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// Wait for the job to finish and show its result
        #[arg(long)]
        wait: bool,
        /// Submitting again with the same key returns the first job instead of a new one
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Argument passed to the program (repeat for several)
        #[arg(long = "arg", allow_hyphen_values = true)]
        args: Vec<String>,
        /// Wall-clock limit in milliseconds
        #[arg(long)]
        wall_ms: Option<u64>,
        /// CPU-time limit in milliseconds
        #[arg(long)]
        cpu_ms: Option<u64>,
        /// Memory limit in MiB
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Limit on each of stdout and stderr, in bytes
        #[arg(long)]
        output_bytes: Option<u64>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a job and its result; exits 0 only if it succeeded (for a suite's case: if it passed)
    Status {
        id: String,
        /// Wait up to this many seconds for the job to finish
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a job's events, or the global feed
    Events {
        /// Job whose events to show; without it, the global feed
        id: Option<String>,
        /// Global feed: only events after this event id
        #[arg(long, conflicts_with = "id")]
        after: Option<i64>,
        /// Global feed: at most this many events
        #[arg(long, default_value_t = 100, conflicts_with = "id")]
        limit: u32,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Follow a job live until it ends: its output on stdout and stderr as it is written, its
    /// events and progress on stderr; exits like `status` with the final state. Given a batch
    /// id, follow the batch: each case's verdict as it ends, then the summary; exits like
    /// `batch --wait`
    Watch {
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Cancel a queued or running job
    Cancel {
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
    /// Submit a test suite: a JSON file in the shape of POST /v1/batches, or one of lines ending
    /// in .ndjson or .jsonl, sent as a stream (README: "Test suites")
    Batch {
        /// The suite file
        suite: PathBuf,
        /// Follow the batch with a progress bar, print a summary, and exit 0 only if every
        /// case passed
        #[arg(long)]
        wait: bool,
        /// Write the JUnit XML report to this file once the batch is done (implies --wait)
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Submitting again with the same key returns the first batch instead of a new one
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
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
    /// No answer: connection refused, DNS failure, timeout. `detail` holds reqwest's whole cause
    /// chain, since its top-level message alone ("error sending request") says nothing useful.
    #[error("cannot reach the kiln server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The server answered with an HTTP error.
    #[error("{}", api_message(*.status, .code.as_deref(), .message))]
    Api {
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
    /// The server answered 2xx with something that is not the JSON we expect.
    #[error("unexpected answer from {url}: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("cannot write {}: {source}", path.display())]
    WriteFile { path: PathBuf, source: io::Error },
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
}

fn api_message(status: StatusCode, code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) => format!("server answered {status}: {message} ({code})"),
        None => format!("server answered {status}: {message}"),
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
            | Batch { opts, .. } => opts,
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
            wait,
            idempotency_key,
            args,
            wall_ms,
            cpu_ms,
            memory_mb,
            output_bytes,
            ..
        } => {
            let code = read_text(&file)?;
            let runtime = match runtime {
                Some(runtime) => runtime,
                None => runtime_for(&file, &code, &api.runtimes().await?)?,
            };
            let submission = Submission {
                runtime,
                code,
                stdin: stdin.as_deref().map(read_text).transpose()?,
                args,
                limits: Limits {
                    wall_ms,
                    cpu_ms,
                    memory_mb,
                    output_bytes,
                },
            };
            // Before the submit: a Ctrl-C during it then still gets the id shown.
            let mut interrupt = wait.then(Interrupt::listen).transpose()?;
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
            note(&format!("job {id} submitted; waiting for it to end"));
            let job = match interrupt.guard("the job", id, api.poll_job(id, None)).await {
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
        ClientCommand::Status { id, wait, .. } => {
            let job = match wait {
                None | Some(0) => api.get_job(&id, None).await?,
                Some(secs) => {
                    let deadline = Instant::now() + Duration::from_secs(secs);
                    api.poll_job(&id, Some(deadline)).await?
                }
            };
            show_job(&job, json)?;
            Ok(conclusion(&job))
        }
        ClientCommand::Events {
            id, after, limit, ..
        } => {
            let feed = match &id {
                Some(id) => api.job_events(id).await?,
                None => api.global_events(after, limit).await?,
            };
            if json {
                print_json(&feed)?;
                return Ok(Conclusion::Success);
            }
            let events = feed
                .get("events")
                .and_then(Value::as_array)
                .ok_or_else(|| ClientError::BadResponse {
                    url: api.base.to_string(),
                    detail: "no \"events\" list in the answer".to_owned(),
                })?;
            // The global feed mixes jobs, so it needs the job column that a job's own list does not.
            let with_job = id.is_none();
            print_stdout(|out| {
                for event in events {
                    writeln!(out, "{}", event_line(event, with_job))?;
                }
                Ok(())
            })?;
            if with_job
                && events.len() >= limit as usize
                && let Some(next) = feed.get("next_after").and_then(Value::as_i64)
            {
                note(&format!("more events may follow: use --after {next}"));
            }
            Ok(Conclusion::Success)
        }
        ClientCommand::Watch { id, .. } => {
            let mut interrupt = Interrupt::listen()?;
            let watched = interrupt.guard("the job or batch", &id, watch::watch(&api, &id, json));
            Ok(watched.await?.unwrap_or(Conclusion::Interrupted))
        }
        ClientCommand::Batch {
            suite,
            wait,
            junit,
            idempotency_key,
            ..
        } => {
            batch::run(
                &api,
                json,
                &suite,
                wait,
                junit.as_deref(),
                idempotency_key.as_deref(),
            )
            .await
        }
        ClientCommand::Cancel { id, .. } => {
            let job = api.cancel(&id).await?;
            if json {
                print_json(&job)?;
            } else {
                print_stdout(|out| writeln!(out, "{}", job_line(&job)))?;
            }
            Ok(Conclusion::Success)
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

/// Success for a job that succeeded; for a suite's case, for a case that passed (a wrong answer
/// exits 0 but fails its case).
fn conclusion(job: &Value) -> Conclusion {
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
            let expected = if success {
                Conclusion::Success
            } else {
                Conclusion::Failure
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
        // Not judged yet: not passed.
        let running = json!({"status": "running", "case_name": "t1"});
        assert_eq!(conclusion(&running), Conclusion::Failure);
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
                assert!(wait);
            }
            other => panic!("{other:?}"),
        }
        // The default --limit must not count as given alongside a job id.
        assert!(Cli::try_parse_from(["kiln", "events", "j1"]).is_ok());
        assert!(Cli::try_parse_from(["kiln", "events", "j1", "--after", "3"]).is_err());
    }
}
