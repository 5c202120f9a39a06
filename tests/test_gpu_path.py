"""The GPU's code paths, run on this CPU before any GPU has: torch.compile with no graph break, and bfloat16.

Compiled (inductor on the CPU): train.py --compile compiles one graph per mode (evaluation, the annealing mask,
full attention) and none per step, and its losses are the eager ones; sample.py --compile compiles per kind of
pass, never per step or per prompt. bfloat16 (autocast for training, bf16 weights for decoding and scoring): every
path runs, and its numbers sit within bf16's precision of fp32's. The CPU has no bf16 units, so this checks dtypes
and tolerances, not speed.
"""

import json
import math

import pytest
import torch

from checkpoint import load_checkpoint, save_checkpoint
from conftest import ASSETS, STORY_START, run
from lab.gpu_check import compile_counts, fresh_compiler
from model import ModelConfig, Transformer, attention_at, diffusion_loss
from sample import Decoding, Sampling, Trained, generate_ar, generate_batch
from support.sampling import nucleus, nucleus_by_sorting
from tokenizer import load_tokenizer

TEXT = ASSETS / "text" / "tinystories_val.txt"


@pytest.fixture(scope="module")
def one_layer(stories_ckpt, tmp_path_factory):
    """stories260K cut to its first layer (inductor compiles a layer in seconds), with its data."""
    model, meta = load_checkpoint(stories_ckpt)
    small = Transformer(ModelConfig(**{**meta["model"], "n_layer": 1}))
    small.load_state_dict(model.state_dict(), strict=False)
    out = tmp_path_factory.mktemp("one_layer")
    save_checkpoint(out / "ckpt", small, {**meta, "model": {**meta["model"], "n_layer": 1}}, stories_ckpt)
    run("data/prepare.py", "--tokenizer", stories_ckpt, "--out", out / "data", TEXT, "--shard-tokens", "50000")
    return out / "ckpt", out / "data"


def compiled_counts():
    """(graph breaks, frames run eagerly, graphs compiled) since fresh_compiler()."""
    return compile_counts()[:3]


def train_losses(ckpt, data, out, *options):
    run("train.py", "--init-from", ckpt, "--data-dir", data, "--out-dir", out, "--max-iters", "4", "--eval-interval",
        "2", "--batch-size", "4", "--block-size", "64", "--eval-iters", "2", *options)  # fmt: skip
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line[k] for line in lines for k in ("train_loss", "val_loss") if k in line]


@pytest.mark.parametrize(
    "options, graphs",
    [
        (["--anneal-steps", "2"], 3),  # evaluation (no grad, full attention); training annealing, then full
        (["--diffusion-block", "16", "--ar-weight", "1"], 2),  # evaluation; training (a block mask every step)
    ],
)
def test_compiled_training_has_no_graph_break_and_one_graph_per_mode(one_layer, tmp_path, options, graphs):
    ckpt, data = one_layer
    eager = train_losses(ckpt, data, tmp_path / "eager", *options)
    fresh_compiler()
    compiled = train_losses(ckpt, data, tmp_path / "compiled", *options, "--compile")
    assert compiled_counts() == (0, 0, graphs)  # 4 steps and 3 evaluations, across the end of annealing
    assert len(compiled) == 5 and compiled == pytest.approx(eager, rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_compiled_decoding_has_no_graph_break_and_no_graph_per_step_or_prompt(one_layer, tmp_path):
    """One graph per kind of pass, whatever the prompt and the length: after a first prompt, a second of another
    length, decoded to another length, compiles nothing new."""
    ckpt, _ = one_layer
    blocks = tmp_path / "blocks"
    meta = json.loads((ckpt / "config.json").read_text())
    model, _ = load_checkpoint(ckpt)
    save_checkpoint(blocks, model, {**meta, "objective": "diffusion", "diffusion_block": 8}, ckpt)
    for mode, graphs in [
        (["--diffusion"], 1),  # the whole sequence, every step
        (["--diffusion", "--cache"], 2),  # a whole pass that refreshes the cache; a block's pass over it
        (["--ar"], 2),  # the prompt; then one token at a time (a size of 1 is never symbolic)
        (["--ckpt", blocks], 3),  # a noisy block over the cache; clean blocks into it; the block that fills it
        (["--ckpt", blocks, "--speculative"], 2),  # the prompt; then the newest token, a draft and a noisy block
    ]:
        fresh_compiler()
        for prompt, length in (("Once upon a time", "24"), (STORY_START, "40")):
            run("sample.py", "--ckpt", ckpt, *mode, "--prompt", prompt, "--length", length, "--compile")
            assert compiled_counts() == (0, 0, graphs), (mode, prompt)


# ---------------------------------------------------------------------------------------------
# bfloat16 on the CPU


def relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("block, ar", [(0, False), (16, False), (16, True)])
def test_bf16_training_step_is_fp32_within_bf16_precision(stories_ckpt, block, ar):
    """The loss and gradients of one step under CPU autocast (train.py --dtype bfloat16), annealing and full."""
    model, meta = load_checkpoint(stories_ckpt)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 500, (4, 64), generator=g)
    maskable, t = torch.ones_like(x, dtype=torch.bool), torch.rand(4, generator=g)
    noise = torch.rand(4, 64, generator=g)
    for step in (0, 10):  # annealing, then done
        attn = attention_at(step, 4, 64, 0, "cpu", block=block, ar=ar)
        results = []
        for dtype in (torch.bfloat16, torch.float32):
            model.zero_grad()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                sums = diffusion_loss(model, x, maskable, t, noise, meta["mask_token_id"], attn, block=block, ar=ar)
            loss = sums[0] / sums[2] + (sums[3] / sums[4] if ar else 0)
            loss.backward()
            results.append((loss, torch.cat([p.grad.flatten() for p in model.parameters()])))
        (loss16, grad16), (loss32, grad32) = results
        assert loss16.dtype == torch.float32 and abs(loss16.item() - loss32.item()) < 1e-2 * loss32.item()
        assert relative(grad16, grad32) < 5e-2


def test_train_py_in_bf16_follows_fp32(one_layer, tmp_path):
    ckpt, data = one_layer
    fp32 = train_losses(ckpt, data, tmp_path / "fp32", "--anneal-steps", "2")
    bf16 = train_losses(ckpt, data, tmp_path / "bf16", "--anneal-steps", "2", "--dtype", "bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["training"]["args"]["dtype"] == "bfloat16"
    assert bf16 == pytest.approx(fp32, rel=1e-2)


def test_bf16_decoding_runs_every_path_and_follows_fp32(stories_ckpt):
    """bf16 weights (sample.py --dtype bfloat16): the logits within bf16 precision; AR greedy decoding gives fp32's
    text; whole-sequence (with and without its cache), block and self-speculative decoding run and mostly agree."""
    models = {dtype: load_checkpoint(stories_ckpt, dtype=dtype)[0] for dtype in (torch.bfloat16, torch.float32)}
    meta = json.loads((stories_ckpt / "config.json").read_text())
    prompt = load_tokenizer(stories_ckpt, meta).encode(TEXT.read_text()[:2000], bos=True)[:256]
    x = torch.tensor([prompt])
    for attn in ("causal", "full"):  # full: the AR parent read bidirectionally, far from what it learned
        p16, p32 = (models[d](x, attn=attn).log_softmax(-1) for d in models)
        nll16, nll32 = (-p[0, :-1].gather(-1, x[0, 1:, None]).mean().item() for p in (p16, p32))
        assert p16.dtype == torch.float32 and abs(nll16 - nll32) < 0.01 * nll32
        assert (p16.argmax(-1) == p32.argmax(-1)).float().mean() > 0.9
    greedy, mask = Sampling(greedy=True), meta["mask_token_id"]
    ar = {d: generate_ar(m, [prompt[:8]], 32, Trained(mask, objective="ar"), seeds=[0], sampling=greedy)[0]
          for d, m in models.items()}  # fmt: skip
    assert ar[torch.bfloat16] == ar[torch.float32]
    for decoding, trained in [
        (Decoding(16, "confidence", greedy), Trained(mask)),
        (Decoding(16, "confidence", greedy, cache=True, block_length=8), Trained(mask)),
        (Decoding(32, "confidence", greedy), Trained(mask, block=8, keeps_ar=True)),
        (Decoding(16, "random", Sampling(top_p=0.9)), Trained(mask, block=8)),
    ]:
        out = {d: generate_batch(m, [(prompt[:8], [])], 32, decoding, trained, seeds=[0])[0] for d, m in models.items()}
        assert out[torch.bfloat16].shape == out[torch.float32].shape == (1, 40)
        assert ((out[torch.bfloat16] >= 0) & (out[torch.bfloat16] < 512)).all()
    drafter = (models[torch.bfloat16], Trained(mask, block=4, keeps_ar=True))
    drafted = generate_ar(models[torch.bfloat16], [prompt[:8]], 32, Trained(mask), seeds=[0], sampling=greedy,
                          drafter=drafter)[0]  # fmt: skip
    assert drafted == ar[torch.bfloat16]  # self-speculative decoding is AR decoding, in bf16 too
    probs = (torch.randn(16, 5000, generator=torch.Generator().manual_seed(0)) * 2).softmax(-1).bfloat16()
    assert torch.equal(nucleus(probs, 0.9), nucleus_by_sorting(probs, 0.9))  # top-p's radix select on bf16


def story_choices(path, n=24):
    """Multiple choice from held-out stories: a story's first 12 words, then its next 4 or those of 3 others."""
    stories = [text.split() for text in TEXT.read_text().split("\n\n") if len(text.split()) > 20][:n]
    items = []
    for i, words in enumerate(stories):
        others = [stories[(i + k) % n][12:16] for k in (1, 2, 3)]
        choices = [" ".join(c) for c in [words[12:16], *others]]
        items.append({"context": " ".join(words[:12]), "choices": choices[i % 4 :] + choices[: i % 4], "label": -i % 4})
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_eval_scores_in_bf16_follow_fp32(stories_ckpt, tmp_path):
    """lab/eval.py --dtype bfloat16 against fp32: the exact AR NLL, a diffusion bound, and multiple choice
    (AR: 0.83 in both)."""
    import shutil

    diffusion = tmp_path / "diffusion"
    shutil.copytree(stories_ckpt, diffusion)
    meta = json.loads((diffusion / "config.json").read_text())
    (diffusion / "config.json").write_text(json.dumps({**meta, "objective": "diffusion"}))
    choices = ["--task", "choice", "--data", story_choices(tmp_path / "choices.jsonl")]
    for ckpt, task in [
        (stories_ckpt, ["--task", "nll", "--data", TEXT, "--limit", "3"]),
        (diffusion, ["--task", "nll", "--data", TEXT, "--limit", "3", "--mc", "4"]),
        (stories_ckpt, choices),
    ]:
        scores = [json.loads(run("lab/eval.py", "--ckpt", ckpt, *task, "--dtype", d).stdout) for d in DTYPES]
        (bf16, fp32), key = scores, "nll" if "nll" in scores[0] else "accuracy"
        assert key == "nll" or fp32[key] > 0.6  # far above chance, 0.25: the comparison says something
        assert math.isfinite(bf16[key]) and abs(bf16[key] - fp32[key]) <= 0.01 * fp32[key] + (key != "nll") / 24


DTYPES = ("bfloat16", "float32")
