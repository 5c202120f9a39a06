"""Self-speculative decoding (sample.py --speculative, --verifier): exactly the AR mode's output, in float64 on GPT-2
and LLaMA shapes; a wrong draft rejected where it is wrong, the cache then as a fresh prefill's; sampling's joint
distribution equal to AR sampling's (a chi-square test that catches an off-by-one in the acceptance rule)."""

import itertools
import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

import sample
from conftest import assert_user_error, run
from model import ModelConfig, Transformer, diffusion_loss
from sample import Sampling, Trained, generate_ar, sampling_probs, valid_logits
from tokenizer import until_eos

BOS = 0


def block_model(arch, vocab, seed=0, std=1.0):
    """A random model in float64, its matrices drawn wide enough that its outputs vary (GPT-2's initialisation
    gives one token over and over at this size)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, vocab_size=vocab, block_size=128, n_layer=2, n_head=2, n_embd=16)
    model = Transformer(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std) if p.dim() == 2 else None
    return model


GREEDY = Sampling(greedy=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_speculative_gives_the_ar_tokens(arch):
    """Single prompts and a batch of prompts of different lengths, self-drafted and with another model drafting."""
    model, other = block_model(arch, 6), block_model(arch, 6, seed=1)
    trained = Trained(5, block=4, vocab=5, keeps_ar=True)
    prefixes = [[BOS], [BOS, 3, 4], [BOS, *range(1, 5), *range(1, 5)], [BOS, 2, 2, 1, 3]]
    ar, ar_passes, _ = generate_ar(model, prefixes, 30, trained, seeds=[0] * 4, sampling=GREEDY)
    spec, passes, accepted = generate_ar(
        model, prefixes, 30, trained, seeds=[0] * 4, sampling=GREEDY, drafter=(model, trained)
    )
    assert spec == ar and sum(accepted) > 0  # not vacuous: drafts were accepted
    for prefix, expected in zip(prefixes, ar):
        alone, *_ = generate_ar(model, [prefix], 30, trained, seeds=[0], sampling=GREEDY, drafter=(model, trained))
        assert alone == [expected]
    verified, _, accepted = generate_ar(
        model, prefixes, 30, trained, seeds=[0] * 4, sampling=GREEDY, drafter=(other, trained)
    )
    assert verified == ar and sum(accepted) > 0
    ending = replace(trained, eos_id=2)  # stopping at EOS: each row's text up to its EOS is AR's
    ar, *_ = generate_ar(model, prefixes, 30, ending, seeds=[0] * 4, sampling=GREEDY)
    spec, *_ = generate_ar(model, prefixes, 30, ending, seeds=[0] * 4, sampling=GREEDY, drafter=(model, ending))
    texts = [[until_eos(r[len(p) :], 2) for r, p in zip(out, prefixes)] for out in (spec, ar)]
    assert texts[0] == texts[1] and any(len(t) < 30 for t in texts[1])  # some rows did end


class ForcedDrafter:
    """A drafter whose draft is a known continuation, except one position forced wrong."""

    def __init__(self, target, wrong_at, vocab):
        self.target, self.wrong_at, self.vocab, self.calls = list(target), wrong_at, vocab, 0

    def make_cache(self, batch_size, max_len):
        return []

    def __call__(self, tokens, attn, where, cache=None, positions=None):
        self.calls += 1
        positions = torch.arange(tokens.shape[1]).expand_as(tokens) if positions is None else positions
        predicted = (positions + 1)[where].tolist()  # the logit at position i drafts token i + 1
        ids = [self.target[p] if p < len(self.target) else 0 for p in predicted]
        ids = [(t + 1) % self.vocab if p == self.wrong_at else t for t, p in zip(ids, predicted)]
        return torch.nn.functional.one_hot(torch.tensor(ids), self.vocab + 1).double() * 30


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_wrong_draft_is_rejected_where_it_is_wrong_and_the_cache_is_a_fresh_prefill(arch, monkeypatch):
    model, trained = block_model(arch, 12), Trained(11, block=4, vocab=11)
    prompt = [BOS, 4, 2]
    (target,), *_ = generate_ar(model, [prompt], 20, trained, seeds=[0], sampling=GREEDY)
    caches = []
    make_cache = model.make_cache
    monkeypatch.setattr(model, "make_cache", lambda *a: caches.append(make_cache(*a)) or caches[-1])
    # the prefill gives token 3, the first pass token 4 and drafts 5-7 (all right), then 9-11: 10 is wrong
    drafter = ForcedDrafter(target, wrong_at=10, vocab=11)
    (out,), passes, accepted = generate_ar(
        model, [prompt], 20, trained, seeds=[0], sampling=GREEDY, drafter=(drafter, trained)
    )
    assert out == target
    assert accepted[:2] == [3, 1]  # round 2 accepts token 9, rejects 10 and puts the AR token there
    assert all(a == 3 for a in accepted[2:])
    # after the rollback (which writes nothing: the next pass overwrites the rejected slots), the cache holds
    # each verified token's keys and values as a fresh prefill of them would
    n = len(out) - 1  # the newest token's are written by the pass that would follow
    fresh = model.make_cache(1, n)
    model(torch.tensor([out[:n]]), attn="causal", cache=fresh, positions=torch.arange(n))
    for kept, new in zip(caches[0], fresh):
        torch.testing.assert_close(kept.k[:, :, :n], new.k, rtol=0, atol=1e-12)
        torch.testing.assert_close(kept.v[:, :, :n], new.v, rtol=0, atol=1e-12)


def ar_joint(model, trained, prompt, n, sampling):
    """The exact probability of each n-token continuation under AR sampling: {tokens: probability}."""
    V = trained.vocab
    sequences = list(itertools.product(range(V), repeat=n))
    x = torch.tensor([prompt + list(s) for s in sequences])
    with torch.no_grad():
        logits = model(x, attn="causal")[:, len(prompt) - 1 : -1]  # (S, n, V')
    probs = sampling_probs(valid_logits(logits.reshape(-1, logits.shape[-1]), trained.mask_id, V), sampling)
    step = probs.view(len(sequences), n, -1).gather(-1, torch.tensor(sequences)[..., None]).squeeze(-1)
    return dict(zip(sequences, step.prod(-1).tolist()))


def chi_square(counts, expected, total):
    """Pearson's statistic and degrees of freedom, cells expected fewer than 5 times pooled into one."""
    small = [s for s in expected if expected[s] * total < 5]
    stat, pooled_seen, pooled_expected = 0.0, 0, 0.0
    for s, p in expected.items():
        if s in small:
            pooled_seen, pooled_expected = pooled_seen + counts.get(s, 0), pooled_expected + p * total
        else:
            stat += (counts.get(s, 0) - p * total) ** 2 / (p * total)
    if pooled_expected:
        stat += (pooled_seen - pooled_expected) ** 2 / pooled_expected
    return stat, len(expected) - len(small) + bool(small) - 1


def off_by_one(logits, drafts, q, sampling, generator=None):
    """verify() with draft j checked against the AR distribution one position late: what the test must catch."""
    k = len(drafts)
    p = sampling_probs(logits, sampling)
    for j, d in enumerate(drafts.tolist()):
        if torch.rand(1, generator=generator) * q[j, d] >= p[min(j + 1, k), d]:
            residual = (p[j] - q[j]).clamp(min=0)
            return j, int(sample.draw((residual if residual.sum() > 0 else p[j])[None], generator))
    return k, int(sample.draw(p[k:], generator))


@pytest.mark.parametrize("broken", [False, True])
def test_speculative_sampling_draws_the_ar_joint_distribution(broken, monkeypatch):
    """4 tokens of a 3-token vocabulary (81 continuations) over 6,000 seeds, drafted 2 at a time: the first two
    tokens come from AR passes, the next two from verified drafts (an accepted one, a rejection's residual, or the
    bonus token). Chi-square at p = 0.001 against the exact AR probabilities."""
    model, sampling = block_model("llama", 4, std=0.3), Sampling(temperature=1.0, top_p=1.0)
    trained, n, N = Trained(3, block=3, vocab=3, keeps_ar=True), 4, 6000
    if broken:
        monkeypatch.setattr(sample, "verify", off_by_one)
    out, _, accepted = generate_ar(
        model, [[BOS]] * N, n, trained, seeds=range(N), sampling=sampling, drafter=(model, trained)
    )
    counts = {}
    for row in out:
        counts[tuple(row[1:])] = counts.get(tuple(row[1:]), 0) + 1
    stat, dof = chi_square(counts, ar_joint(model, trained, [BOS], n, sampling), N)
    critical = dof + 3.09 * math.sqrt(2 * dof) + 2  # about the 0.999 quantile (Wilson-Hilferty, generous)
    assert (stat > critical) == broken, (stat, critical, dof)
    assert broken or 0 < sum(accepted) < len(accepted) * 2  # drafts both accepted and rejected


def test_ar_weight_trains_the_clean_half_as_the_ar_model():
    """With ar=True the clean half's logits are the AR model's (the plain causal pass), and their CE comes back."""
    model = block_model("llama", 12)
    x = torch.randint(1, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones_like(x, dtype=torch.bool)
    maskable[:, 0] = False
    t, noise = torch.full((2, 4), 0.5), torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    weighted, ce, n, ar_ce, n_ar = diffusion_loss(model, x, maskable, t, noise, 11, block=4, ar=True)
    logits = model(x, attn="causal")[:, :-1]
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), x[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(ar_ce, plain)
    assert n_ar == 30
    without = diffusion_loss(model, x, maskable, t, noise, 11, block=4)  # the diffusion half does not change
    assert torch.allclose(without[2].double(), n.double())


def as_block_checkpoint(ckpt, out, **facts):
    """A copy of an AR checkpoint read as a block-diffusion one (the same weights: its AR mode is the parent)."""
    shutil.copytree(ckpt, out)
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "objective": "diffusion", **facts}))
    return out


def test_cli_speculative_and_verifier_give_the_ar_text(stories_ckpt, tmp_path):
    keeps_ar = as_block_checkpoint(stories_ckpt, tmp_path / "w1", diffusion_block=4, ar_weight=1.0)
    blocks = as_block_checkpoint(stories_ckpt, tmp_path / "w0", diffusion_block=4)
    common = ["--greedy", "--length", "40", "--prompt", "Once upon a time"]
    ar = run("sample.py", "--ckpt", stories_ckpt, "--ar", *common)
    spec = run("sample.py", "--ckpt", keeps_ar, "--speculative", *common)
    verified = run("sample.py", "--ckpt", blocks, "--verifier", stories_ckpt, *common)
    assert spec.stdout == ar.stdout == verified.stdout
    assert "tokens per pass and row" in spec.stderr and "accepted on average" in verified.stderr
    proc = run("sample.py", "--ckpt", stories_ckpt, "--speculative", *common, check=False)
    assert_user_error(proc, "--speculative", "block-diffusion")
    data = tmp_path / "none"
    proc = run(
        "train.py",
        "--init-from",
        stories_ckpt,
        "--data-dir",
        data,
        "--out-dir",
        tmp_path / "o",
        "--ar-weight",
        "1",
        check=False,
    )
    assert_user_error(proc, "--ar-weight", "--diffusion-block")


def test_train_keeps_the_ar_model_records_its_weight_and_resumes_with_it(stories_ckpt, tmp_path):
    from conftest import ASSETS

    text = tmp_path / "t.txt"
    text.write_text((ASSETS / "text" / "tinystories_val.txt").read_text()[:30000])
    run("data/prepare.py", "--tokenizer", stories_ckpt, "--out", tmp_path / "data", text, "--workers", "1")
    tiny = ["--data-dir", tmp_path / "data", "--batch-size", "2", "--block-size", "32", "--eval-iters", "1"]
    out = tmp_path / "w1"
    run(
        "train.py",
        "--init-from",
        stories_ckpt,
        "--out-dir",
        out,
        *tiny,
        "--max-iters",
        "2",
        "--eval-interval",
        "2",
        "--diffusion-block",
        "8",
        "--ar-weight",
        "1",
        "--masked-blocks",
        "0.5",
    )
    config = json.loads((out / "config.json").read_text())
    assert config["ar_weight"] == 1 and config["diffusion_block"] == 8
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["val_ar_nll"] < m["val_nll_bound"] for m in metrics)  # the AR mode: the parent, nearly
    run("train.py", "--init-from", "resume", "--out-dir", out, "--max-iters", "3", "--extend-schedule")
    assert json.loads((out / "config.json").read_text())["ar_weight"] == 1
    onward = tmp_path / "onward"  # a new run from it trains on with its weight, unless told otherwise
    run("train.py", "--init-from", out, "--out-dir", onward, *tiny, "--max-iters", "1", "--eval-interval", "1")
    assert json.loads((onward / "config.json").read_text())["ar_weight"] == 1
