"""miniature.py --scaling end to end on tiny settings: the code path of the scaling study."""

import json

import pytest

from conftest import ASSETS, run


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
