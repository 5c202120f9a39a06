"""lab/miniature.py end to end on tiny settings: the scaling and levers studies, and a run that resumes."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ASSETS, ROOT, run


@pytest.mark.slow
def test_scaling_study_on_tiny_settings(tmp_path):
    out = tmp_path / "scaling"
    tiny = "--iters 3 --batch-size 2 --block-size 32 --eval-windows 2 --mc 2 --gen-samples 2 --gen-length 8"
    proc = run(
        "lab/miniature.py",
        "--scaling",
        "--quick",
        "--assets",
        ASSETS,
        "--out",
        out,
        *tiny.split(),
        "--test-stories",
        6,
        "--points",
        "1,2",
    )
    results = json.loads((out / "results.json").read_text())
    points = results["points"]
    assert [(p["arm"], p["times"], p["tokens"]) for p in points] == [
        (arm, k, k * 3 * 2 * 32) for arm in ("adapted", "scratch") for k in (1, 2)
    ]
    for p in [results["ar"], *points]:
        assert p["nll"]["stderr"] > 0 and 0 <= p["cloze"]["accuracy"] <= 1 and p["genppl"]["gen_ppl"] > 1
    assert results["ar"]["nll"]["bound"] is False and all(p["nll"]["bound"] for p in points)
    # each point is a checkpoint of one run, resumed: the 2x snapshot continued the 1x one
    metrics = (out / "adapted-2x" / "metrics.jsonl").read_text().splitlines()
    assert [m["iter"] for m in map(json.loads, metrics) if "val_loss" in m] == [0, 3, 6]
    items = [json.loads(line) for line in (out / "cloze.jsonl").read_text().splitlines()]
    assert items and all(len(i["choices"]) == 2 and i["choices"][0] != i["choices"][1] for i in items)
    table = (out / "results.md").read_text()
    assert table.count("| adapted, ") == 2 and table.count("| scratch, ") == 2 and table in proc.stdout
    assert (out / "scaling.png").stat().st_size > 0


@pytest.mark.slow
def test_levers_study_on_tiny_settings(tmp_path):
    """--levers ROWS: the recipe's row and the chosen ones; a batch lever keeps the tokens, a mask-init
    lever converts its own base."""
    out = tmp_path / "levers"
    tiny = "--iters 4 --batch-size 2 --block-size 32 --eval-windows 2 --mc 2 --test-stories 6"
    proc = run("lab/miniature.py", "--levers", "7,10", "--assets", ASSETS, "--out", out, *tiny.split())
    rows = json.loads((out / "results.json").read_text())["levers"]
    assert [r["lever"] for r in rows] == [
        "the miniature's recipe",
        "twice the batch, half the steps",
        "mask token: noisy mean (official)",
    ]
    tokens = [
        json.loads((out / f"lever-{k}" / "metrics.jsonl").read_text().splitlines()[-1])["tokens"] for k in range(3)
    ]
    assert tokens == [4 * 2 * 32] * 3
    config = json.loads((out / "lever-1" / "config.json").read_text())["training"]["args"]
    assert (config["batch_size"], config["max_iters"]) == (4, 2)
    assert (out / "stories260K-noisy-mean").is_dir()
    assert all(r["nll"]["bound"] and 0 <= r["cloze"]["accuracy"] <= 1 for r in rows)
    table = (out / "results.md").read_text()
    assert table in proc.stdout and table.count("\n| ") == 5  # AR and three levers, after the header


TINY = "--iters 6 --batch-size 2 --block-size 32 --eval-windows 2 --mc 2 --gen-steps 4 --gen-samples 2 "
TINY += "--gen-length 8 --test-stories 6"


def miniature(out, **popen):
    command = [sys.executable, "lab/miniature.py", "--assets", ASSETS, "--out", out, *TINY.split()]
    return subprocess.Popen(list(map(str, command)), cwd=ROOT, stdout=subprocess.PIPE, text=True, **popen)


def processes_of(out):
    """The PIDs of live processes whose command line names `out` (the miniature and every script it runs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # not a process, or gone
            continue
        if entry.name.isdigit() and str(out) in cmdline and (entry / "stat").read_text().split()[2] != "Z":
            pids.append(int(entry.name))
    return pids


def wait_until_gone(out, timeout=60):
    deadline = time.time() + timeout
    while processes_of(out) and time.time() < deadline:
        time.sleep(0.1)
    return processes_of(out)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_miniature_resumes_to_the_same_results_and_sigterm_leaves_no_process(tmp_path):
    """The uninterrupted run; then one killed twice with SIGKILL at random moments and rerun: the same
    results.md. Its children stop with it (train.py saves), so the rerun continues where they were."""
    t0 = time.time()
    whole = miniature(tmp_path / "whole")
    assert whole.wait() == 0
    duration = time.time() - t0
    expected = (tmp_path / "whole" / "results.md").read_text()

    out, seed = tmp_path / "killed", random.randrange(1 << 30)
    moments = [random.Random(seed).uniform(1, duration / 2) for _ in range(2)]  # two kills before it ends
    for moment in moments:
        proc = miniature(out)
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert not wait_until_gone(out), f"seed {seed}: its children outlived a SIGKILL"
    rerun = miniature(out)
    assert rerun.wait() == 0, f"seed {seed}, killed at {moments}"
    assert (out / "results.md").read_text() == expected, f"seed {seed}, killed at {moments}"

    # SIGTERM while a script runs: it is passed on, the miniature exits 143 once its child has stopped
    out = tmp_path / "stopped"
    proc = miniature(out, stderr=subprocess.PIPE)
    for line in proc.stderr:
        if line.startswith("step 0:"):  # train.py is running
            break
    proc.send_signal(signal.SIGTERM)
    proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not processes_of(out)
    assert miniature(out).wait() == 0
    assert (out / "results.md").read_text() == expected


@pytest.mark.slow
def test_blocks_study_on_tiny_settings(tmp_path):
    """--blocks: the AR parent, then one adaptation per block size, with the NLL bound, the cloze, Gen PPL one
    token per step and with the threshold, forward passes per token and tokens/s."""
    out = tmp_path / "blocks"
    tiny = "--iters 4 --batch-size 2 --block-size 32 --eval-windows 2 --mc 2 --test-stories 6 --gen-samples 2 "
    proc = run(
        "lab/miniature.py", "--blocks", "4,0", "--assets", ASSETS, "--out", out, *tiny.split(), "--gen-length", 8
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["stories260K, AR parent", "blocks of 4", "whole sequence (32, the paper)"]
    assert json.loads((out / "blocks-4" / "config.json").read_text())["diffusion_block"] == 4
    for r in rows[1:]:
        assert r["nll"]["bound"] and r["genppl exact"]["gen_ppl"] > 1 and r["genppl threshold"]["gen_ppl"] > 1
        assert r["speed exact"]["passes_per_token"] >= r["speed threshold"]["passes_per_token"] > 0
    table = (out / "results.md").read_text()
    assert table in proc.stdout and table.count("\n| ") == 4  # the AR parent and two block sizes, after the header


@pytest.mark.slow
def test_speculative_study_on_tiny_settings(tmp_path):
    """--speculative: one adaptation with blocks of 4 per AR weight (W = 0 verified by the parent), each with its AR
    mode's exact NLL, its block ELBO, and greedy self-speculative decoding timed against AR greedy, lossless."""
    out = tmp_path / "spec"
    tiny = "--iters 4 --batch-size 2 --block-size 32 --eval-windows 2 --mc 2 --test-stories 8 --gen-length 8"
    proc = run("lab/miniature.py", "--speculative", "--assets", ASSETS, "--out", out, *tiny.split())
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 7 and json.loads((out / "spec-w1-m0.5" / "config.json").read_text())["ar_weight"] == 1
    assert rows[0]["name"] == "AR objective, the same tokens" and not rows[0]["ar_nll"]["bound"]
    for r in rows[1:]:
        assert not r["ar_nll"]["bound"] and r["elbo"]["bound"] and all(s["lossless"] for s in r["speed"].values())
        passes = 2 if r["name"].startswith("W = 0,") else 1  # the parent verifying: two models, two passes a round
        assert all(s["tokens_per_pass"] >= 8 / 9 / passes for s in r["speed"].values())
    table = (out / "results.md").read_text()
    assert (
        table in proc.stdout and table.count("\n| ") == 9
    )  # the parent, the AR control and six runs, after the header
