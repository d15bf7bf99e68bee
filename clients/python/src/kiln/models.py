"""Typed shapes of what the server sends and takes: jobs, events, batches, cases, groups, runtimes.

The models mirror docs/api.md, docs/jobs.md, docs/streams.md and docs/suites.md. Every answer
model keeps fields it does not name (`extra="allow"`), so a newer server's additions reach the
caller instead of failing validation; the request models (`JobSpec`, `Limits`) pass unknown
fields through to the server, which refuses what it does not know with a 422 that names the
field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .content import Content, Encoding, decoded

Status = Literal["queued", "running", "succeeded", "failed", "timed_out", "cancelled", "error"]

#: The statuses a job never leaves.
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "error"}
)
#: The event types that end a job: one of them is a job's last event but for webhook attempts.
TERMINAL_EVENTS: frozenset[str] = frozenset(f"job.{s}" for s in TERMINAL_STATUSES)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class Limits(_Request):
    """A job's limits (docs/jobs.md); a field left out takes the server's default."""

    wall_ms: int | None = None
    cpu_ms: int | None = None
    memory_mb: int | None = None
    processes: int | None = None
    output_bytes: int | None = None
    file_bytes: int | None = None
    cpu_percent: int | None = None


class JobSpec(_Request):
    """The body of `POST /v1/jobs`. `code`, `stdin` and each of `files` is text (`str`) or
    bytes (`bytes`, sent in base64); `outputs` names the files to keep after the run (paths or
    globs, docs/jobs.md), which `Job.files_out` then lists."""

    runtime: str
    code: Content
    stdin: Content | None = None
    args: list[str] | None = None
    files: dict[str, Content] | None = None
    outputs: list[str] | None = None
    limits: Limits | None = None
    priority: int | None = None
    max_attempts: int | None = None
    callback_url: str | None = None


class Progress(_Answer):
    percent: int
    message: str | None = None


class FileOut(_Answer):
    """A file a job kept from its run: fetch it with `client.file(job.id, path)`."""

    path: str
    size: int
    content_type: str


class FileOmitted(_Answer):
    """A file that matched a job's `outputs` but was not kept, and why: `too_many_files`,
    `too_many_bytes` or `not_a_regular_file`."""

    path: str
    size: int | None = None
    reason: str


class Job(_Answer):
    """A job as `GET /v1/jobs/{id}` returns it; fields are null until they apply.

    `stdout` and `stderr` are the text a program wrote, or, where `stdout_encoding` or
    `stderr_encoding` is `"base64"`, its bytes (not UTF-8) in base64: `stdout_bytes` and
    `stderr_bytes` are the exact bytes either way.
    """

    id: str
    status: Status
    outcome: str | None = None
    runtime: str | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    priority: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    stdout: str | None = None
    stdout_encoding: Encoding | None = None
    stderr: str | None = None
    stderr_encoding: Encoding | None = None
    stdout_truncated: bool | None = None
    stderr_truncated: bool | None = None
    wall_ms: int | None = None
    cpu_ms: int | None = None
    memory_kb: int | None = None
    limits: dict[str, int] | None = None
    error: str | None = None
    progress: Progress | None = None
    batch_id: str | None = None
    case_name: str | None = None
    verdict: str | None = None
    verdict_detail: str | None = None
    outputs: list[str] | None = None
    files_out: list[FileOut] | None = None
    files_omitted: list[FileOmitted] | None = None

    @property
    def finished(self) -> bool:
        """Whether the job has ended (its status is terminal)."""
        return self.status in TERMINAL_STATUSES

    @property
    def stdout_bytes(self) -> bytes | None:
        """The exact bytes the program wrote to stdout (null while there is no result)."""
        return decoded(self.stdout, self.stdout_encoding)

    @property
    def stderr_bytes(self) -> bytes | None:
        """The exact bytes the program wrote to stderr (null while there is no result)."""
        return decoded(self.stderr, self.stderr_encoding)


class JobPage(_Answer):
    """A page of `GET /v1/jobs`: pass `next_after` back as `after` (or, newest first,
    `next_before` as `before`) for the next; null at the end."""

    jobs: list[Job]
    next_after: str | None = None
    next_before: str | None = None


class Event(_Answer):
    """A stored event: a state change of a job or batch, with its id in the feed."""

    id: int
    type: str
    at: str
    job_id: str | None = None
    batch_id: str | None = None
    attempt: int | None = None
    data: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        """Whether this event ends its job."""
        return self.type in TERMINAL_EVENTS


class EventPage(_Answer):
    """A page of the global feed: pass `next_after` back as `after` to continue (newest
    first: `next_before` as `before`)."""

    events: list[Event]
    next_after: int | None = None
    next_before: int | None = None


class Output(_Answer):
    """What a running job wrote, live (`event: output`); not stored piece by piece, no id.

    `data` is the text, or for a piece that is not UTF-8 (`encoding` `"base64"`) its bytes in
    base64; `data_bytes` is the exact bytes either way. `attempt` is the run that wrote it:
    each attempt's output follows its `job.started`.
    """

    job_id: str
    attempt: int | None = None
    stream: Literal["stdout", "stderr"]
    data: str
    encoding: Encoding | None = None

    @property
    def data_bytes(self) -> bytes:
        """The exact bytes of this piece."""
        return decoded(self.data, self.encoding) or b""


class OutputLost(_Answer):
    """Output chunks the server skipped for this stream (`event: output.lost`): the whole
    output is still in the job's result."""

    job_id: str
    chunks: int


#: What a live stream yields.
StreamMessage = Event | Output | OutputLost


class CaseRef(_Answer):
    name: str
    job_id: str


class BatchSubmitted(_Answer):
    """The answer to `POST /v1/batches`: the batch id and each case's job id, in suite order."""

    id: str
    done: bool
    cases: list[CaseRef]


class BatchProgress(_Answer):
    done: int
    total: int


class GroupsSummary(_Answer):
    """Each k's pass@k mean over the groups (null where a group has fewer than k samples)."""

    groups: int
    pass_at_k: dict[str, float | None]


class Batch(_Answer):
    """A suite as `GET /v1/batches/{id}` returns it."""

    id: str
    done: bool
    progress: BatchProgress
    passed: int
    failed: int
    #: Counts by status and by verdict: in `GET /v1/batches/{id}`, not in the list's rows.
    by_status: dict[str, int] = {}
    by_verdict: dict[str, int] = {}
    runtime: str | None = None
    compare: str | None = None
    groups: GroupsSummary | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class BatchPage(_Answer):
    """A page of `GET /v1/batches`, newest first: pass `next_before` back as `before` (oldest
    first, `order="oldest"`: `next_after` as `after`); null at the end."""

    batches: list[Batch]
    next_before: str | None = None
    next_after: str | None = None


class Case(_Answer):
    """A case of a batch, as `GET /v1/batches/{id}/cases` lists it."""

    index: int
    name: str
    job_id: str
    status: Status
    group: str | None = None
    outcome: str | None = None
    verdict: str | None = None
    detail: str | None = None
    wall_ms: int | None = None


class Group(_Answer):
    """A group of a batch (the samples of one problem) with its pass@k."""

    name: str
    cases: int
    done: int
    passed: int
    pass_at_k: dict[str, float | None]


class Runtime(_Answer):
    """A runtime the server offers (`GET /v1/runtimes`)."""

    name: str
    display: str | None = None
    version: str | None = None
    aliases: list[str] = []
    extensions: list[str] = []
    compiled: bool = False
    limits: dict[str, dict[str, int]] | None = None
