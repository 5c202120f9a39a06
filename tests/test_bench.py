"""bench.py runs and reports ratios (speed targets live in the benchmark, never in timed tests)."""

import json
import shutil

import pytest
import torch

from conftest import run
from formats.hf import hf_twin
from lab.bench import QUALITY_VARIANTS
from model import ModelConfig, Transformer


@pytest.mark.slow
def test_bench_tiny_suite(tmp_path):
    proc = run("lab/bench.py", "--suite", "tiny", "--json", tmp_path / "rows.json")  # the README's command, plus --json
    assert "ours/official" in proc.stdout and "/official" in proc.stdout and "matmul peak" in proc.stdout
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    train = {(r["engine"], r["mode"]) for r in rows if r["bench"] == "train"}
    assert train == {
        ("ours", "anneal"),
        ("ours", "full"),
        ("ours", "ar"),
        ("official-style", "anneal"),
        ("official-style", "full"),
    }
    engines = {r["engine"] for r in rows if r["bench"] == "decode"}
    assert "official-style loop" in engines and "ours AR with KV cache" in engines and len(engines) == 12
    assert {f"ours block diffusion, B = {b}, exact cache" for b in (4, 32)} <= engines
    batched = [r["engine"] for r in rows if r["bench"] == "batched decode"]
    assert batched == ["batch 1 (a loop)", "batches of 8", "batches of 32"]
    assert "batched decoding" in proc.stdout and all(r["tokens_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_official_engine_computes_our_function(arch):
    """The official-style side of every ratio runs transformers with our weights: the same logits."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=arch,
        vocab_size=100,
        block_size=32,
        n_layer=2,
        n_head=4,
        n_embd=32,
        **(dict(n_kv_head=2, tie_embeddings=False, rope_theta=500.0) if arch == "llama" else {}),
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "norm" in name:
                w += 0.1 * torch.randn_like(w)
        hf = hf_twin(model).eval()
        x = torch.randint(0, 100, (2, 20))
        full = hf(input_ids=x, attention_mask=torch.zeros(2, 1, 20, 20)).logits  # the official code's dense mask
        torch.testing.assert_close(full, model(x, attn="full"), atol=1e-5, rtol=0)
        torch.testing.assert_close(hf(input_ids=x).logits, model(x, attn="causal"), atol=1e-5, rtol=0)
        assert not torch.allclose(full, hf(input_ids=x).logits, atol=1e-3)


@pytest.mark.slow
def test_bench_quality_of_the_approximate_options(stories_ckpt, tmp_path):
    """--quality-ckpt: every variant scored, each against the exact sampler and its exact block order."""
    diffusion = tmp_path / "as-diffusion"
    shutil.copytree(stories_ckpt, diffusion)
    meta = json.loads((diffusion / "config.json").read_text())
    (diffusion / "config.json").write_text(json.dumps({**meta, "objective": "diffusion"}))
    proc = run(
        "lab/bench.py",
        "--suite",
        "tiny",
        "--skip",
        "train,decode,batched",
        "--quality-ckpt",
        diffusion,
        "--judge",
        stories_ckpt,
        "--quality-samples",
        "16",
        "--json",
        tmp_path / "rows.json",
    )
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == list(QUALITY_VARIANTS)
    assert all(r["gen_ppl"] > 1 and 0 < r["passes_per_batch"] <= 64 for r in rows)
    assert "vs blocks" in proc.stdout


def test_bench_decoding_on_a_checkpoints_weights(stories_ckpt, tmp_path):
    """--decode-ckpt: AR against every diffusion decoder on real weights, with passes per generated token; on a
    block checkpoint, self-speculative decoding too; and the cost of a pass against the tokens it reads."""
    from test_speculative import as_block_checkpoint

    ckpt = as_block_checkpoint(stories_ckpt, tmp_path / "w1", diffusion_block=4, ar_weight=1.0)
    args = ["--suite", "tiny", "--skip", "train,decode,batched", "--decode-ckpt", ckpt]
    proc = run("lab/bench.py", *args, "--json", tmp_path / "rows.json")
    every = json.loads((tmp_path / "rows.json").read_text())["rows"]
    rows = {r["engine"]: r for r in every if r["bench"] == "checkpoint decode"}
    cost = [r for r in every if r["bench"] == "pass cost"]
    assert [r["tokens"] for r in cost] == [1, 2, 4, 8, 16, 32] and cost[0]["vs_one"] == 1
    assert len(rows) == 8 and "passes/token" in proc.stdout and "one pass of T new tokens" in proc.stdout
    assert rows["self-speculative, drafts of 3"]["passes_per_token"] <= 1  # each pass yields a token or more
    assert rows["AR with KV cache"]["passes_per_token"] == 1 and rows["whole sequence"]["passes_per_token"] == 1
    assert rows["blocks of 4, exact cache"]["passes_per_token"] > 1  # one more pass per block, to cache it
    assert all(r["passes_per_token"] <= rows["blocks of 4, exact cache"]["passes_per_token"] for r in rows.values())
