"""lab/gpu_check.py on this CPU, tiny: every row it prints on a GPU, none FAIL (tests/test_gpu.py runs it whole on a
GPU). The one command must run before a GPU session spends its minutes on it; tests/test_gpu_path.py checks the
compiled and bf16 paths themselves in detail."""

import json

import pytest

from conftest import run


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    proc = run("lab/gpu_check.py", "--device", "cpu", "--tiny", "--json", tmp_path / "rows.json")
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["check"] for r in rows] == ["flex"] * 3 + ["train"] * 4 + ["decode"] * 10 + ["ddp"]
    assert proc.stdout.startswith("lab/gpu_check.py --tiny on CPU") and "| check | case | figures |" in proc.stdout
    for r in rows:  # the table says what the JSON says
        assert f"| {r['check']} | {r['case']} | {r['figures']} | {r['result']} |" in proc.stdout
    assert [r for r in rows if r["result"] != "PASS"] == []
    # flex: the BlockMask's forward equals the boolean mask's; a CPU has no FlexAttention backward
    assert all(r["loss_diff"] <= 1e-4 and r["grad_diff"] is None for r in rows[:3])
    # train: fp32 on a CPU; compiled, one graph for annealing and one for full attention, none broken, the same loss
    train = {(r["shape"], r["engine"]): r for r in rows if r["check"] == "train"}
    for shape in ("GPT-2-small", "LLaMA-3.2-1B"):
        compiled = train[shape, "compiled"]
        assert (compiled["graph_breaks"], compiled["eager_frames"], compiled["graphs"]) == (0, 0, 2), compiled
        assert (
            compiled["loss_vs_eager"] <= 1e-5 and compiled["norm_vs_eager"] <= 1e-4 and compiled["dtype"] == "float32"
        )
        assert train[shape, "eager"]["tokens_per_s"] > 0 and "mfu" not in compiled  # no datasheet peak for a CPU
    # decode: every engine at batch 1 and 8, each against AR at its batch
    decode = [r for r in rows if r["check"] == "decode"]
    assert len({r["engine"] for r in decode}) == 5 and sorted(r["batch"] for r in decode) == [1] * 5 + [8] * 5
    assert all(r["tokens_per_s"] > 0 for r in decode)
    assert [r["vs_ar"] for r in decode if r["engine"].startswith("AR")] == [1, 1]
    # ddp: two gloo processes, their parameters equal after the steps; compiled inside DDP, nothing broken
    ddp = rows[-1]
    assert (ddp["world"], ddp["backend"], ddp["spread"], ddp["graphs"]) == (2, "gloo", 0, 2), ddp
    assert (ddp["graph_breaks"], ddp["eager_frames"]) == (0, 0), ddp


@pytest.mark.slow
def test_gpu_check_compiled_decoding_on_the_cpu(tmp_path):
    """--only decode-compiled: sample.py --compile's path for every engine, batch 1 and 8, no graph break, no frame
    left to run eagerly (a recompile limit hit would be one)."""
    run("lab/gpu_check.py", "--device", "cpu", "--tiny", "--only", "decode,decode-compiled", "--json", tmp_path / "r")
    rows = json.loads((tmp_path / "r").read_text())["rows"]
    compiled = [r for r in rows if r["mode"] == "compiled"]
    assert len(compiled) == 10 and [r for r in rows if r["result"] != "PASS"] == []
    assert all(r["graph_breaks"] == r["eager_frames"] == 0 and r["graphs"] >= 1 and r["vs_eager"] > 0 for r in compiled)
