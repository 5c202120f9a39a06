"""Block diffusion: the paper's method with a block size B, checked against plain versions written here.

The training input is [x_t ; x_0] under one mask (model.allowed); decoding runs a block at a time over an
exact KV cache (sample.BlockCache). Each is compared with the obvious computation: one forward per block
for the loss, no cache at all for decoding.
"""

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, Transformer, allowed, attention_at, diffusion_loss
from sample import STRATEGIES, Decoding, Sampling, Trained, generate_batch

V, MASK, BOS = 64, 63, 1


def tiny(arch, seed=0, block_size=64):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, vocab_size=V, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    return Transformer(cfg).double().eval()


def test_the_mask_by_hand():
    """L = 4, B = 2: rows are queries, columns keys; 0-3 the noisy copy, 4-7 the clean one."""
    q = torch.arange(8)
    expected = [
        "11000000",  # noisy 0 (block 0): its block's noisy tokens
        "11000000",
        "00111100",  # noisy 2 (block 1): its block, and the clean tokens of block 0
        "00111100",
        "00001100",  # clean 0: the clean tokens of its own block
        "00001100",
        "00001111",  # clean 2: clean blocks 0 and 1
        "00001111",
    ]
    got = allowed(q[:, None], q[None, :], 4, 2)
    assert ["".join("1" if v else "0" for v in row) for row in got.tolist()] == expected
    # annealing inside a block: at ratio 0 a noisy query sees its block's causal past only
    annealing = attention_at(0, 10**9, 4, 0, "cpu", block=2)
    assert annealing[1, 0] and not annealing[0, 1] and annealing[2, 4] and annealing[2, 5] and not annealing[2, 3]
    assert torch.equal(annealing[4:], got[4:])  # the clean copy is never annealed


def loss_block_by_block(model, x, maskable, t, noise, block):
    """Σ CE/t, Σ CE, n: one forward per block j of [clean blocks before j ; noisy block j] under the block-causal
    mask, the block's first token predicted from the clean token before it."""
    B, L = x.shape
    level = t.repeat_interleave(block, dim=1)[:, :L]
    masked = maskable & (noise < level)
    xt = x.masked_fill(masked, MASK)
    weighted = ce_sum = 0.0
    for lo in range(0, L, block):
        hi = min(lo + block, L)
        seq = torch.cat([x[:, :lo], xt[:, lo:hi]], 1)
        pos = torch.arange(hi)
        mask = pos[None, :] // block <= pos[:, None] // block
        logits = model(seq, attn=mask)
        for b in range(B):
            for p in range(max(lo, 1), hi):
                if masked[b, p]:
                    ce = F.cross_entropy(logits[b, p - 1], x[b, p])
                    weighted, ce_sum = weighted + ce / level[b, p], ce_sum + ce
    return weighted, ce_sum, masked.sum()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("block", [1, 3, 8])
def test_the_block_loss_is_one_forward_per_block(arch, block):
    model = tiny(arch)
    g = torch.Generator().manual_seed(1)
    B, L = 3, 16
    x = torch.randint(2, V - 1, (B, L), generator=g)
    maskable = torch.ones(B, L, dtype=torch.bool)
    maskable[:, 0] = False
    t = torch.rand(B, -(-L // block), generator=g, dtype=torch.float64).clamp(min=0.2)
    noise = torch.rand(B, L, generator=g, dtype=torch.float64)
    got = diffusion_loss(model, x, maskable, t, noise, MASK, block=block)
    want = loss_block_by_block(model, x, maskable, t, noise, block)
    for a, b in zip(got, want):
        assert torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=1e-6)  # logits are fp32


def test_one_block_is_the_paper():
    """B = the context (normalised to 0 where it is read: train.check_run, sample.Trained.blocks_in): the same
    loss, bit for bit, with t per sequence or per (one) block."""
    model = tiny("gpt2").float()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(2, V - 1, (4, 32), generator=g)
    maskable, noise, t = torch.ones(4, 32, dtype=torch.bool), torch.rand(4, 32, generator=g), torch.rand(4, generator=g)
    paper = diffusion_loss(model, x, maskable, t, noise, MASK)
    assert all(torch.equal(a, b) for a, b in zip(paper, diffusion_loss(model, x, maskable, t[:, None], noise, MASK)))


def prompts(lengths, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [([BOS, *torch.randint(2, V - 2, (n - 1,), generator=g).tolist()], []) for n in lengths]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cached_block_decoding_gives_the_uncached_tokens(arch):
    """Greedy, float64: the exact cache decodes what forwarding the whole [x ; x] at every step decodes, for
    every order, sub-blocks and the threshold; a batch of prompts of different lengths gives each its own."""
    model = tiny(arch)
    rows, seeds = prompts([1, 4, 5, 11]), [10, 11, 12, 13]
    for strategy in STRATEGIES:
        for block, sub, threshold in ((4, 0, None), (4, 2, None), (8, 0, 0.2), (1, 0, None)):
            decoding = Decoding(0, strategy, Sampling(greedy=True), threshold, block_length=sub)
            trained = Trained(MASK, block=block)
            cached, passes = generate_batch(model, rows, 12, decoding, trained, seeds=seeds)
            plain, _ = generate_batch(model, rows, 12, decoding, trained, seeds=seeds, plain=True)
            assert torch.equal(cached, plain), (strategy, block, sub, threshold)
            for b, (row, seed) in enumerate(zip(rows, seeds) if sub or threshold else []):
                alone, _ = generate_batch(model, [row], 12, decoding, trained, seeds=[seed])
                assert torch.equal(cached[b, : alone.shape[1]], alone[0]), (strategy, block, b)


def test_block_one_is_the_ar_model():
    """B = 1: every block is one token, predicted from the clean token before it: greedy AR decoding."""
    model = tiny("llama")
    (prefix, _), length = prompts([5])[0], 10
    x, passes = generate_batch(
        model,
        [(prefix, [])],
        length,
        Decoding(0, "confidence", Sampling(greedy=True)),
        Trained(MASK, block=1),
        seeds=[0],
    )
    ids = list(prefix)
    for _ in range(length):
        logits = model(torch.tensor([ids]))[0, -1]
        logits[MASK] = float("-inf")
        ids.append(int(logits.argmax()))
    assert x[0].tolist() == ids
    assert passes == length  # the prompt's pass, then one per token: it writes the token and predicts the next


def test_decoding_stops_once_every_row_has_ended():
    model = tiny("gpt2")
    eos = int(model(torch.tensor([[BOS]]))[0, -1].argmax())  # the first token greedy decoding makes
    decoding = Decoding(0, "confidence", Sampling(greedy=True))
    x, passes = generate_batch(model, [([BOS], [])], 32, decoding, Trained(MASK, block=4, eos_id=eos), seeds=[0])
    assert x[0, 1] == eos and (x[0, 5:] == eos).all()  # the first block decoded, the rest not
    assert passes <= 5


def test_block_one_lambada_flags_are_the_ar_flags(stories_ckpt):
    """B = 1 reads each token from the clean tokens before it: the greedy check of a block-diffusion model with
    blocks of one token is the AR model's, token for token."""
    from checkpoint import load_checkpoint
    from conftest import ASSETS
    from lab.eval import Unit, greedy_flags
    from tokenizer import load_tokenizer

    model, meta = load_checkpoint(stories_ckpt)
    tok = load_tokenizer(stories_ckpt, meta)
    texts = [s for s in (ASSETS / "text" / "tinystories_val.txt").read_text()[:20000].split("\n") if len(s) > 40][:24]
    units = [
        Unit(ids, len(ids) - 1 - k % 2, [], 0) for k, ids in enumerate(tok.encode(s, bos=True)[:40] for s in texts)
    ]
    ar = greedy_flags(model, {**meta, "objective": "ar"}, tok, units, 5)
    blocks_of_one = greedy_flags(model, {**meta, "objective": "diffusion", "diffusion_block": 1}, tok, units, 5)
    assert blocks_of_one == ar and any(ar) and not all(ar)


def test_train_with_blocks(stories_ckpt, tmp_path):
    """--diffusion-block: the context is the paper, bit for bit; smaller blocks train, record B, resume with it, and
    the checkpoint samples a block at a time (its first block prefilled, then one clean pass per block)."""
    import json

    from conftest import ASSETS, run

    text = tmp_path / "t.txt"
    text.write_text((ASSETS / "text" / "tinystories_val.txt").read_text()[:60000])
    data = tmp_path / "data"
    run("data/prepare.py", "--tokenizer", stories_ckpt, "--out", data, text, "--workers", "1")
    tiny = ["--init-from", stories_ckpt, "--data-dir", data, "--batch-size", "2", "--block-size", "32"]
    tiny += ["--max-iters", "3", "--eval-interval", "3", "--eval-iters", "1", "--anneal-steps", "2"]
    runs = {b: tmp_path / f"b{b}" for b in ("default", 32, 8)}
    for b, out in runs.items():
        run("train.py", *tiny, "--out-dir", out, *([] if b == "default" else ["--diffusion-block", b]))
    run("train.py", *tiny, "--out-dir", tmp_path / "pairs", "--diffusion-block", 8, "--complementary-masks")
    read = lambda out, name: (out / name).read_bytes()
    assert read(runs["default"], "model.safetensors") == read(runs[32], "model.safetensors")
    assert read(runs["default"], "metrics.jsonl") == read(runs[32], "metrics.jsonl")
    assert read(runs["default"], "model.safetensors") != read(runs[8], "model.safetensors")
    assert read(runs[8], "model.safetensors") != read(tmp_path / "pairs", "model.safetensors")
    config = json.loads(read(runs[8], "config.json"))
    assert (
        config["diffusion_block"] == 8 and json.loads(read(runs["default"], "config.json"))["diffusion_block"] is None
    )
    run("train.py", "--init-from", "resume", "--out-dir", runs[8], "--max-iters", "4", "--extend-schedule")
    assert json.loads(read(runs[8], "config.json"))["training"]["args"]["diffusion_block"] == 8
    proc = run("sample.py", "--ckpt", runs[8], "--prompt", "Once upon a time", "--length", "16", "--steps", "16")
    assert "Once upon a time" in proc.stdout


@pytest.mark.parametrize("block", [0, 4])
def test_complementary_masks_supervise_every_token_once(block):
    class Recorder:
        def __call__(self, xt, attn, where, positions=None):
            self.xt = xt
            return torch.zeros(int(where.sum()), V)

    g = torch.Generator().manual_seed(4)
    x = torch.randint(2, V - 1, (3, 16), generator=g)
    maskable = torch.ones(3, 16, dtype=torch.bool)
    maskable[:, 0] = False
    t = torch.rand(3, 4, generator=g) if block else torch.rand(3, generator=g)
    model = Recorder()
    *_, n = diffusion_loss(model, x, maskable, t, torch.rand(3, 16, generator=g), MASK, block=block, complement=True)
    first, second = model.xt[:3, :16] == MASK, model.xt[3:, :16] == MASK
    assert torch.equal(first | second, maskable) and not (first & second).any() and n == maskable.sum()
