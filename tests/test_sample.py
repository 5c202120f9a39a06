"""sample.py: shift handling pinned by a stub, strategies, the exact speed-ups, AR with a KV cache, bad input."""

import json
from dataclasses import replace

import pytest
import torch

from conftest import ASSETS, STORY_START, run
from model import ModelConfig, Transformer
from sample import (
    STRATEGIES,
    Decoding,
    Sampling,
    Trained,
    generate,
    generate_ar,
    generate_batch,
    sample_tokens,
    valid_logits,
)
from tokenizer import load_tokenizer, until_eos

V, MASK, BOS = 50, 49, 0


class Oracle:
    """Logits that put all mass on a known target, shifted as a trained model's are: the logit at i is target[i+1].

    It checks it is asked only for logits that predict still-masked positions, and counts its calls.
    """

    def __init__(self, target, shift=True):
        self.target, self.shift, self.calls, self.rows = target, shift, 0, 0
        self.tok_emb = torch.nn.Embedding(1, 1)

    def __call__(self, x, attn, where, cache=None, positions=None):
        assert attn == "full"
        self.calls += 1
        self.rows += int(where.sum())
        predicted = torch.nn.functional.pad(x[:, 1:], (0, 1), value=-1) if self.shift else x
        assert (predicted[where] == MASK).all(), "logits requested for a position that is not masked"
        nxt = torch.nn.functional.pad(self.target[1:], (0, 1)) if self.shift else self.target
        logits = torch.full((*x.shape, V), -30.0)
        at = slice(0, x.shape[1]) if positions is None else positions
        logits.scatter_(-1, nxt[at].expand(x.shape[0], -1)[..., None], 30.0)
        return logits[where]

    def make_cache(self, batch_size, max_len):
        return []


CASES = {  # (prefix length incl. BOS, generated length, suffix length)
    "unconditional": (1, 12, 0),
    "prefix": (5, 10, 0),
    "infill": (4, 8, 5),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "threshold,block,cache",
    [(None, 0, False), (None, 4, False), (0.9, 0, False), (0.9, 3, False), (None, 4, True), (0.9, 3, True)],
)
def test_oracle_is_reproduced_exactly(case, strategy, threshold, block, cache):
    P, N, S = CASES[case]
    target = torch.randint(1, MASK, (P + N + S,), generator=torch.Generator().manual_seed(P * N))
    target[0] = BOS
    oracle = Oracle(target)
    steps = 6
    decoding = Decoding(steps, strategy, threshold=threshold, block_length=block, cache=cache)
    prefix, suffix = target[:P].tolist(), target[P + N :].tolist()
    x, forwards = generate(oracle, prefix, N, decoding, Trained(MASK), suffix=suffix, num_samples=3, seed=1)
    assert torch.equal(x, target.expand(3, -1))  # prompt and suffix unchanged, every mask replaced correctly
    assert forwards == oracle.calls <= steps


def test_no_shift_checkpoints_decode_unshifted():
    target = torch.randint(1, MASK, (10,))
    target[0] = BOS
    x, _ = generate(Oracle(target, shift=False), [BOS], 9, Decoding(9, "confidence"), Trained(MASK, shift=False))
    assert torch.equal(x[0], target)


def test_no_forward_pass_when_nothing_was_revealed():
    """random with many steps: most steps reveal nothing and must cost no forward pass."""
    target = torch.randint(1, MASK, (9,))
    target[0] = BOS
    oracle = Oracle(target)
    x, forwards = generate(oracle, [BOS], 8, Decoding(200, "random"), Trained(MASK))
    assert torch.equal(x[0], target) and forwards == oracle.calls <= 8
    assert oracle.rows == 8  # the random order predicts only the tokens it reveals: each position once


def test_threshold_decodes_in_fewer_passes():
    target = torch.randint(1, MASK, (33,))
    target[0] = BOS
    oracle = Oracle(target)
    generate(oracle, [BOS], 32, Decoding(32, "confidence", threshold=0.9), Trained(MASK))
    assert oracle.calls == 1  # the oracle is sure of everything at once


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(arch="llama", vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=16)).eval()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_real_model_same_seed_same_text(tiny_model, strategy):
    decoding = Decoding(5, strategy, Sampling(top_p=0.9, temperature=0.8))
    kw = dict(num_samples=2, suffix=[5, 6])
    a, _ = generate(tiny_model, [BOS, 3, 4], 10, decoding, Trained(MASK), seed=7, **kw)
    b, _ = generate(tiny_model, [BOS, 3, 4], 10, decoding, Trained(MASK), seed=7, **kw)
    c, _ = generate(tiny_model, [BOS, 3, 4], 10, decoding, Trained(MASK), seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (
        not (a == MASK).any()
        and a[:, :3].eq(torch.tensor([BOS, 3, 4])).all()
        and a[:, -2:].eq(torch.tensor([5, 6])).all()
    )


def ar_without_cache(model, prefix, length, seed, sampling):
    """AR sampling the plain way, generate_ar's reference: the whole sequence through the model for every token."""
    g, x = torch.Generator().manual_seed(seed), list(prefix)
    for _ in range(length):
        logits = model(torch.tensor([x]), attn="causal")[:, -1]
        x.append(sample_tokens(valid_logits(logits, MASK, None), sampling, g)[0].item())
    return x


def test_ar_cache_equals_no_cache(tiny_model):
    for greedy, seed in [(True, 0), (False, 3)]:
        sampling = Sampling(greedy=greedy)
        cached, *_ = generate_ar(
            tiny_model, [[BOS, 7], [BOS, 7]], 20, Trained(MASK), seeds=[seed, seed + 1], sampling=sampling
        )
        assert cached == [ar_without_cache(tiny_model, [BOS, 7], 20, s, sampling) for s in (seed, seed + 1)]
        assert MASK not in cached[0] + cached[1]


def test_ar_greedy_reproduces_the_stories260k_story(stories_ckpt):
    proc = run("sample.py", "--ckpt", stories_ckpt, "--ar", "--greedy", "--length", "40")
    assert proc.stdout.startswith(STORY_START)
    assert "tokens/s" in proc.stderr and "forward passes" in proc.stderr


def test_cli_samples_infill_and_show(stories_ckpt):
    command = [
        "sample.py",
        "--ckpt",
        stories_ckpt,
        "--diffusion",
        "--prompt",
        "Once upon a time",
        "--suffix",
        "The end.",
    ]
    command += ["--length", "12", "--steps", "6", "--num-samples", "2", "--seed", "3", "--strategy", "confidence"]
    proc = run(*command, "--show")
    samples = proc.stdout.strip().split("\n\n" + "-" * 40 + "\n\n")
    assert len(samples) == 2 and all(s.startswith("Once upon a time") and s.endswith("The end.") for s in samples)
    frames = [line for line in proc.stderr.splitlines() if line.startswith("[step ")]
    assert len(frames) == 6 and "█" in frames[0] and "█" not in frames[-1]
    assert run(*command).stdout == proc.stdout  # the same without --show


def test_cache_with_one_step_per_block_is_exact(tiny_model):
    """Every block decoded in its first step starts from a fresh cache: the same tokens as without it."""
    decoding = Decoding(4, "confidence", Sampling(greedy=True), block_length=3)
    exact, _ = generate(tiny_model, [BOS, 3], 12, decoding, Trained(MASK), suffix=[5, 6])
    cached, _ = generate(tiny_model, [BOS, 3], 12, replace(decoding, cache=True), Trained(MASK), suffix=[5, 6])
    assert torch.equal(exact, cached)


def test_nucleus_is_exact():
    """The radix-select nucleus equals the textbook one beside it: sort everything, keep the smallest
    prefix reaching p (sums in float64), plus any token tied with the least probable one kept."""
    from support.sampling import nucleus, nucleus_by_sorting

    torch.manual_seed(0)
    for scale in (0.5, 3, 10):  # near-flat (a random-weight model) to peaked (a trained one)
        probs = (torch.randn(32, 5000) * scale).softmax(-1)
        probs[0, :2500] = probs[0, 2500:]  # every value twice: ties at every edge
        probs[0] /= probs[0].sum()
        for p in (0.1, 0.5, 0.9, 0.99, 1.0):
            assert torch.equal(nucleus(probs, p), nucleus_by_sorting(probs, p)), (scale, p)
    uniform = torch.full((1, 10), 0.1)
    assert nucleus(uniform, 0.5).all() and nucleus_by_sorting(uniform, 0.5).all()  # one value: all tied, all kept
    for fn in (nucleus, nucleus_by_sorting):
        assert fn(torch.tensor([[0.5, 0.3, 0.2]]), 0.5).tolist() == [[True, False, False]]
        assert fn(torch.tensor([[0.2, 0.5, 0.3]]), 0.7).tolist() == [[False, True, True]]


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, -1)
    tokens, _ = sample_tokens(logits, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.bincount(tokens, minlength=4) / 20000, probs, atol=0.015, rtol=0)
    tokens, p = sample_tokens(logits, Sampling(top_p=0.7), generator=torch.Generator().manual_seed(0))  # nucleus {0, 1}
    torch.testing.assert_close(
        torch.bincount(tokens, minlength=4) / 20000, torch.tensor([0.625, 0.375, 0, 0]), atol=0.015, rtol=0
    )
    torch.testing.assert_close(p[0], torch.tensor([0.625, 0.375, 0, 0]))


def test_prompt_generated_text_and_suffix_are_decoded_as_written(stories_ckpt):
    """One decode for the whole sample: decoded apart, SentencePiece glued words ("day,Mat", "onthe")."""
    from tokenizer import Tokenizer

    spm, bpe = {"type": "sentencepiece", "files": []}, {"type": "gpt2-bpe", "files": []}
    tokenizers = [
        load_tokenizer(stories_ckpt),
        Tokenizer(ASSETS / "llama2", {"mask_token_id": 32000, "bos_token_id": 1, "eos_token_id": 2, "tokenizer": spm}),
        Tokenizer(
            ASSETS / "gpt2", {"mask_token_id": 50257, "bos_token_id": 50256, "eos_token_id": 50256, "tokenizer": bpe}
        ),
    ]
    text = "Today is a wonderful day, the cat sat on the mat and then it fell asleep."
    for tok in tokenizers:
        ids = tok.encode(text, bos=True)
        for start, end in [(3, 9), (5, 12), (2, len(ids))]:
            assert tok.render(ids[:start], ids[start:end], ids[end:]) == text, (tok.kind, start, end)
    proc = run(
        "sample.py", "--ckpt", stories_ckpt, "--ar", "--greedy", "--prompt", "Once upon a time,", "--length", "12"
    )
    assert proc.stdout.startswith("Once upon a time, there was a little girl"), proc.stdout


def test_suffix_ids_keep_the_prompt_and_lose_the_stray_piece():
    from tokenizer import Tokenizer

    spm, bpe = {"type": "sentencepiece", "files": []}, {"type": "gpt2-bpe", "files": []}
    llama = Tokenizer(
        ASSETS / "llama2", {"mask_token_id": 32000, "bos_token_id": 1, "eos_token_id": 2, "tokenizer": spm}
    )
    gpt2 = Tokenizer(
        ASSETS / "gpt2", {"mask_token_id": 50257, "bos_token_id": 50256, "eos_token_id": 50256, "tokenizer": bpe}
    )
    prompt = "Lily went to the park."
    assert (
        llama.encode_suffix(prompt, " She was happy.")
        == llama.encode(prompt + " She was happy.")[len(llama.encode(prompt)) :]
    )
    assert 29871 not in llama.encode_suffix(prompt, " She was happy.")  # no stray "▁"
    assert llama.encode_suffix(prompt, "She was happy.") == llama.encode("She was happy.")  # a new word, as written
    assert gpt2.encode_suffix("He said:", '"Yes."') == gpt2.encode('"Yes."')  # the prompt's ":" stays the prompt's


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_batch_decodes_each_prompt_as_it_decodes_alone(arch):
    """Prompts of 1 to 200 tokens, some with a suffix, padded into one batch: greedy decoding gives
    each the tokens it gets alone, for every order, with and without blocks (padding changes nothing)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=V, block_size=256, n_layer=2, n_head=2, n_embd=32)
    model = Transformer(cfg).double().eval()  # float64: batch shapes round differently, at 1e-16 instead of 1e-7
    g = torch.Generator().manual_seed(1)
    lengths, suffixes = [1, 2, 7, 30, 64, 111, 170, 200], [0, 3, 0, 0, 5, 0, 1, 0]
    rows = [
        (
            [BOS, *torch.randint(3, V - 2, (n - 1,), generator=g).tolist()],
            torch.randint(3, V - 2, (s,), generator=g).tolist(),
        )
        for n, s in zip(lengths, suffixes)
    ]
    seeds = list(range(100, 108))
    for strategy in STRATEGIES:
        for block_length in (0, 4):
            decoding = Decoding(8, strategy, Sampling(greedy=True), block_length=block_length)
            batch, _ = generate_batch(model, rows, 16, decoding, Trained(MASK), seeds=seeds)
            for b, (row, seed) in enumerate(zip(rows, seeds)):
                alone, _ = generate_batch(model, [row], 16, decoding, Trained(MASK), seeds=[seed])
                n = alone.shape[1]
                assert torch.equal(batch[b, :n], alone[0]), (strategy, block_length, b)


def test_prompts_file_decodes_in_batches_as_one_at_a_time(stories_ckpt, tmp_path):
    """sample.py --prompts: JSONL prompts of different lengths, some with a suffix; greedy; batches of 5 give
    the tokens batches of 1 give, one JSON line per sample in the input's order."""
    prompts = [
        {"prompt": "Once upon a time"},
        {"prompt": "Lily and Tom went to the big park near the river to play with a red ball", "suffix": " The end."},
        {"prompt": "The dog"},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    outputs = []
    for batch_size in ("1", "5"):
        out = tmp_path / f"out{batch_size}.jsonl"
        options = ["--diffusion", "--length", "12", "--steps", "6", "--greedy", "--num-samples", "2", "--batch-size"]
        options.append(batch_size)
        proc = run("sample.py", "--ckpt", stories_ckpt, "--prompts", tmp_path / "p.jsonl", *options, "--output", out)
        assert proc.stdout == ""  # the samples went to --output
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    one, five = outputs
    assert [r["prompt"] for r in one] == [p["prompt"] for p in prompts for _ in range(2)]
    assert [r["tokens"] for r in one] == [r["tokens"] for r in five]
    assert one[2]["suffix"] == " The end." and one[2]["text"].startswith(prompts[1]["prompt"])
    assert one[2]["text"].endswith(" The end.") and set(one[0]) == {
        "prompt",
        "suffix",
        "text",
        "tokens",
        "batch_forward_passes",
    }
    (tmp_path / "p.txt").write_text("".join(p["prompt"] + "\n" for p in prompts))  # --ar: plain lines
    ar = []
    for batch_size in ("1", "3"):
        out = tmp_path / f"ar{batch_size}.jsonl"
        options = ["--ar", "--greedy", "--length", "16", "--batch-size", batch_size, "--output", out]
        run("sample.py", "--ckpt", stories_ckpt, "--prompts", tmp_path / "p.txt", *options)
        ar.append([json.loads(line)["tokens"] for line in out.read_text().splitlines()])
    assert ar[0] == ar[1] and len(ar[0]) == 3


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_ar_batch_decodes_each_prompt_as_it_decodes_alone(arch):
    """AR: prompts of 1 to 200 tokens in one batch, each row at its own positions; greedy gives each the
    tokens it gets alone, and those of the plain loop without a cache."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=V, block_size=256, n_layer=2, n_head=2, n_embd=32)
    model = Transformer(cfg).double().eval()  # float64: batch shapes round differently, at 1e-16 instead of 1e-7
    g = torch.Generator().manual_seed(1)
    prefixes = [
        [BOS, *torch.randint(3, V - 2, (n - 1,), generator=g).tolist()] for n in [1, 2, 7, 30, 64, 111, 170, 200]
    ]
    kw = dict(sampling=Sampling(greedy=True))
    batch, *_ = generate_ar(model, prefixes, 24, Trained(MASK, eos_id=V - 2), seeds=list(range(8)), **kw)
    for k, (prefix, row) in enumerate(zip(prefixes, batch)):
        (alone,), *_ = generate_ar(model, [prefix], 24, Trained(MASK, eos_id=V - 2), seeds=[k], **kw)
        assert until_eos(row, V - 2) == until_eos(alone, V - 2)
        if k in (0, 3, 7):  # and the plain loop's, for the shortest, a middle and the longest prompt
            assert until_eos(alone, V - 2) == until_eos(ar_without_cache(model, prefix, 24, k, kw["sampling"]), V - 2)
