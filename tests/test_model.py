"""model.py: attention modes, logits at chosen positions, the KV cache, checkpoint round trip."""

import json
import os
import subprocess

import pytest
import torch

from checkpoint import load_checkpoint, read_meta, save_checkpoint
from model import ModelConfig, Transformer
from support.cli import UserError
from support.report import flops_per_token

META = {  # config.json beyond the model: an AR checkpoint whose tokenizer has no files
    "objective": "ar",
    "mask_token_id": 96,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tokenizer": {"type": "sentencepiece", "files": []},
}
CONFIGS = {
    "gpt2": ModelConfig(arch="gpt2", vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32),
    "llama": ModelConfig(
        arch="llama",
        vocab_size=97,
        block_size=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        ffn_dim=48,
        tie_embeddings=False,
        rope_theta=500.0,
    ),
}


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return Transformer(CONFIGS[request.param]).eval()


def test_causal_mode_ignores_the_future(model):
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 97
    a, b = model(idx, attn="causal"), model(changed, attn="causal")
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    full_a, full_b = model(idx, attn="full"), model(changed, attn="full")
    assert not torch.allclose(full_a[:, :10], full_b[:, :10])  # bidirectional sees the change


def test_boolean_masks_reproduce_causal_and_full(model):
    idx = torch.randint(0, 97, (2, 16))
    tril = torch.ones(16, 16, dtype=torch.bool).tril()
    torch.testing.assert_close(model(idx, attn=tril), model(idx, attn="causal"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model(idx, attn=torch.ones(16, 16, dtype=torch.bool)), model(idx, attn="full"), atol=1e-5, rtol=1e-5
    )


def test_logits_at_chosen_positions(model):
    idx = torch.randint(0, 97, (3, 16))
    where = torch.rand(3, 16) < 0.3
    torch.testing.assert_close(model(idx, attn="full", where=where), model(idx, attn="full")[where])


def causal(positions, slots):
    return (positions[:, None] >= torch.arange(slots))[None, None]  # (1, 1, T, slots)


def test_kv_cache_matches_full_recompute(model):
    """AR decoding over the cache: a prompt, then a token at a time, each attending to the slots the mask shows."""
    idx = torch.randint(0, 97, (2, 12))
    cache, at = model.make_cache(2, 12), torch.arange
    steps = [model(idx[:, :5], attn=causal(at(5), 5), cache=cache, positions=at(5))]
    steps += [
        model(idx[:, t : t + 1], attn=causal(at(t, t + 1), 12), cache=cache, positions=at(t, t + 1))
        for t in range(5, 12)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), model(idx, attn="causal"), atol=1e-5, rtol=1e-5)


def test_kv_cache_needs_no_rollback(model):
    """A draft written past what was kept is hidden by the next pass's mask and overwritten by its writes: after
    writing 0..11, positions 8..11 rewritten with other tokens read as a fresh pass over the new sequence."""
    idx, other = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 4))
    cache, at = model.make_cache(2, 12), torch.arange
    model(idx, attn=causal(at(12), 12), cache=cache, positions=at(12))
    new = torch.cat([idx[:, :8], other], 1)
    again = model(other, attn=causal(at(8, 12), 12), cache=cache, positions=at(8, 12))
    torch.testing.assert_close(again, model(new, attn="causal")[:, 8:], atol=1e-5, rtol=1e-5)


def test_flops_per_token_counts_matmuls():
    m = Transformer(CONFIGS["gpt2"])
    cfg = m.cfg
    per_layer = 4 * cfg.n_embd**2 + 2 * cfg.n_embd * cfg.ffn_dim  # qkv + out + mlp weights
    forward = 2 * (cfg.n_layer * per_layer + cfg.vocab_size * cfg.n_embd) + 4 * cfg.n_layer * 16 * cfg.n_embd
    # biases and norm weights are a rounding error, and flops_per_token counts them
    assert abs(flops_per_token(m, 16) - 3 * forward) / (3 * forward) < 0.05


def test_checkpoint_round_trip_and_atomicity(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, META, tokenizer_from=tmp_path)
    loaded, meta2 = load_checkpoint(tmp_path / "ck")
    idx = torch.randint(0, 97, (1, 8))
    torch.testing.assert_close(loaded(idx), model(idx))
    assert meta2["model"]["arch"] == model.cfg.arch
    assert loaded.cfg.tie_embeddings == (loaded.lm_head.weight is loaded.tok_emb.weight)
    with pytest.raises(UserError, match="already exists"):
        save_checkpoint(tmp_path / "ck", model, META, tokenizer_from=tmp_path)

    def crash(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):  # a failed overwrite leaves the old checkpoint intact
        save_checkpoint(tmp_path / "ck", model, META, tokenizer_from=tmp_path, overwrite=True, extra={"x": crash})
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["mask_token_id"] == 96
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_cache_window_matches_the_full_forward(model):
    """sample.py's --cache recomputes a window of positions against cached keys/values of the rest."""
    idx = torch.randint(0, 97, (2, 16))
    cache = model.make_cache(2, 16)
    full = model(idx, attn="full", cache=cache)
    torch.testing.assert_close(full, model(idx, attn="full"))
    window = model(idx[:, 5:11], attn="full", cache=cache, positions=torch.arange(5, 11))
    torch.testing.assert_close(window, full[:, 5:11], atol=1e-5, rtol=1e-5)
    cols = torch.tensor([0, 3, 4, 9, 15])  # scattered positions, each with its own embedding / RoPE angle
    scattered = model(idx[:, cols], attn="full", cache=cache, positions=cols)
    torch.testing.assert_close(scattered, full[:, cols], atol=1e-5, rtol=1e-5)


def test_crash_leftovers_are_cleared_and_the_newest_whole_version_restored(tmp_path, model):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that is gone
    alive = os.getppid()
    ck = tmp_path / "ck"
    for step in (1, 2, 3):  # three whole versions, the newest last
        save_checkpoint(tmp_path / f"v{step}", model, {**META, "mask_token_id": 90 + step}, tokenizer_from=tmp_path)
        os.utime(tmp_path / f"v{step}" / "config.json", ns=(step * 10**18, step * 10**18))
    # crashes between the two renames left previous versions beside it
    (tmp_path / "v3").rename(tmp_path / f".ck.old-{dead.pid}")
    (tmp_path / "v1").rename(tmp_path / ".ck.old-999999999")
    (tmp_path / "v2").rename(tmp_path / f".ck.old-{alive}")  # a live writer's: mid-save, not ours to touch
    (tmp_path / ".ck.old-999999998").mkdir()  # deleted in place by an older version of this code: not whole
    assert read_meta(ck)["mask_token_id"] == 93  # the newest whole .old-* of a dead process
    for kind, pid in [("tmp", dead.pid), ("tmp", alive), ("trash", dead.pid)]:
        (tmp_path / f".ck.{kind}-{pid}").mkdir()
    save_checkpoint(ck, model, META, tokenizer_from=tmp_path, overwrite=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["ck", f".ck.old-{alive}", f".ck.tmp-{alive}"]), left  # the dead ones' are gone
    assert read_meta(ck)["mask_token_id"] == 96


def test_one_device_rule_for_every_script(monkeypatch):
    from sample import parse_args
    from support.cli import pick_device, pick_dtype

    args = parse_args(["--ckpt", "x"])  # sample.py's defaults on this machine: the CPU in fp32
    assert args.device == torch.device("cpu") and args.dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a bf16 GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert pick_device("auto") == torch.device("cuda") and pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float32", torch.device("cuda")) == torch.float32


def test_weights_load_in_the_asked_dtype(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, META, tokenizer_from=tmp_path)
    loaded, _ = load_checkpoint(tmp_path / "ck", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.cfg.tie_embeddings == (loaded.lm_head.weight is loaded.tok_emb.weight)
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
