"""Diffusion decoding, the paper's Algorithm 2 (and AR sampling beside it): this project's generate.py.

    python sample.py --ckpt DIR --prompt "Once upon a time" --length 64 --steps 64 --show
    python sample.py --ckpt DIR --prompt "Lily went to the park." --suffix "She was happy." --length 24
    python sample.py --ckpt DIR --ar --greedy
    python sample.py --ckpt DIR --speculative           # --ar's output, a block model's drafts verified

Every generated position starts as the mask token; prompt and suffix are kept. Each of at most T steps predicts
the masked positions and reveals some of them: each with probability 1/k when k steps are left (random, the
paper's), or the most confident first (confidence, margin, entropy); --threshold X also reveals every token more
probable than X (Fast-dLLM), --block-length B decodes B tokens at a time left to right (LLaDA). A block-diffusion
checkpoint is decoded a block at a time over an exact KV cache, or (--speculative) autoregressively, its drafts
verified by its AR mode. The logit at i predicts token i+1 (the shift).
Exact speed-ups: logits only where needed, no pass when nothing was revealed since the last, top-p without sorting
(nucleus); approximate ones, measured in lab/bench.py: --cache and --threshold. Standard output carries only the
samples; progress, speed and --show go to standard error.
"""

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from checkpoint import load_checkpoint
from data.corpus import read_prompts, read_text
from model import allowed, compile_model, mix, predicting, with_clean_copy
from support import cli
from support.cli import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, HelpFormatter, UserError, output_file
from support.files import growing_file, not_an_input
from support.report import Show
from support.rows import key_mask, pad_right, span_mask
from support.sampling import Sampling, Streams, draw, sample_tokens, sampling_probs
from tokenizer import load_tokenizer, until_eos

STRATEGIES = ("random", "confidence", "margin", "entropy")
DIFFUSION_ONLY = {"steps", "strategy", "threshold", "block_length", "cache", "show", "diffusion"}  # AR refuses them
SAMPLING = {"temperature", "top_k", "top_p"}  # --greedy refuses them


@dataclass(frozen=True)
class Decoding:
    """How diffusion decoding proceeds (the module's docstring says what each option does)."""

    steps: int = 0  # denoising steps T (0: one token per step)
    strategy: str = "random"  # which masked tokens a step reveals: one of STRATEGIES
    sampling: Sampling = Sampling()  # how each predicted token is drawn (AR decoding uses only this)
    threshold: float | None = None  # also reveal every token more probable than this (Fast-dLLM)
    block_length: int = 0  # semi-autoregressive blocks of this many tokens (0: one block)
    cache: bool = False  # approximate key/value cache (Denoiser)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}")


@dataclass(frozen=True)
class Trained:
    """What decoding must match of how a checkpoint was trained (Trained.of(meta)), and of its tokenizer."""

    mask_id: int
    shift: bool = True  # the logit at i predicts token i+1
    block: int = 0  # block diffusion's block size (0: the whole sequence is one block, the paper)
    objective: str = "diffusion"  # "ar": an AR checkpoint, which decode() samples autoregressively
    vocab: int | None = None  # the tokenizer's size: never produce ids beyond it (vocabulary padding)
    eos_id: int | None = None  # AR and block decoding stop once every row has produced it (None: never)
    keeps_ar: bool = False  # its clean tokens attend token-causally, as the AR model (train.py --ar-weight)

    @classmethod
    def of(cls, meta, vocab=None, eos_id=None):
        block, ar = meta.get("diffusion_block") or 0, meta.get("ar_weight", 0) > 0
        return cls(meta["mask_token_id"], meta.get("shift", True), block, meta["objective"], vocab, eos_id, ar)

    def blocks_in(self, width):
        """The block size for rows of `width` columns: 0 where one block holds them (the whole sequence)."""
        return self.block if self.block < width else 0


# ---------------------------------------------------------------------------------------------
# Diffusion decoding (the paper's Algorithm 2)


def generate(model, prefix, length, decoding, trained, *, suffix=(), num_samples=1, seed=0, **options):
    """Diffusion decoding of one prompt -> (tokens (num_samples, len(prefix) + length + len(suffix)), forward passes).

    prefix: token ids starting with BOS; suffix: ids kept after the generated part (infilling); options:
    generate_batch's. Sample s draws from its own stream, mix(seed, s)."""
    rows, seeds = [(list(prefix), list(suffix))] * num_samples, [mix(seed, s) for s in range(num_samples)]
    return generate_batch(model, rows, length, decoding, trained, seeds=seeds, **options)


@torch.no_grad()
def generate_batch(model, rows, length, decoding, trained, *, seeds, on_step=None, plain=False):
    """Diffusion decoding of many prompts at once -> (tokens (B, longest row), forward passes).

    rows: [(prefix ids, suffix ids)], each decoded into prefix + `length` tokens + suffix, right-padded. A row
    decodes as it would alone (up to float rounding; --cache: approximately): nothing attends to or predicts the
    padding, and row b draws from its own generator (seeds[b]). A block-diffusion checkpoint's blocks (columns
    [jB, (j+1)B)) are decoded in turn over the exact cache of the finished ones (BlockCache; plain: its plain
    version, the tests' reference), until every row has produced EOS. on_step(tokens, step): --show.
    """
    device = model.tok_emb.weight.device
    starts = [len(p) for p, _ in rows]  # where each row's generated span begins
    x, real = pad_right([[*p, *[trained.mask_id] * length, *s] for p, s in rows], device)
    masked = span_mask(starts, length, x.shape[1], device)
    block = trained.blocks_in(x.shape[1])
    if block:
        denoiser = BlockCache(model, real, block, trained, exact_cache=not plain)
    else:
        denoiser = Denoiser(model, real, trained, decoding.cache)
    streams, span, step = Streams(seeds, device, starts, length), masked.clone(), 0
    for in_block, budget in schedule(masked, starts, decoding, block):
        if block and trained.eos_id is not None and ((x == trained.eos_id) & span & ~masked).any(1).all():
            x = x.masked_fill(masked, trained.eos_id)  # every row has ended its text: what would follow is not decoded
            break
        denoiser.new_block(x, in_block)
        todo = (masked & in_block).sum(1)  # each row's tokens to reveal in this block, in budget[b] steps
        for i in range(int(budget.max())):
            eligible = masked & in_block
            if not eligible.any():
                break
            steps_left = (budget - i).clamp(min=1)
            keep = todo * (steps_left - 1) // budget.clamp(min=1)  # as many masked as the steps left will reveal
            x, revealed = denoise_step(denoiser, x, eligible, steps_left, keep, decoding, streams)
            masked &= ~revealed
            step += 1
            if on_step:
                on_step(x, step)
    return x, denoiser.forwards


def denoise_step(denoiser, x, eligible, steps_left, keep, decoding, streams):
    """One step of Algorithm 2: predict the eligible (masked) positions, choose which to reveal, leaving `keep`
    of each row masked, and reveal them -> (x with them revealed, which were revealed (B, L))."""
    strategy, threshold = decoding.strategy, decoding.threshold
    # The random order reveals each masked token with probability 1/k (k: the steps left) whatever the model says:
    # draw that first, and (without a threshold) predict only the tokens it reveals.
    picked = eligible & (streams.uniforms(eligible) < 1 / steps_left[:, None]) if strategy == "random" else None
    predict = picked if picked is not None and threshold is None else eligible
    if not predict.any():
        return x, predict
    # 1. predict: a token and its distribution for each predicted position
    logits = denoiser(x, predict, eligible)  # (N, V), row-major over predict
    tokens, probs = streams.tokens(logits, predict.sum(1).tolist(), decoding.sampling)
    # 2. choose which to reveal
    reveal = choose(strategy, eligible, tokens, probs, keep, threshold, picked)
    # 3. reveal them
    denoiser.revealed(reveal)
    return torch.where(reveal, x.masked_scatter(predict, tokens), x), reveal


def choose(strategy, eligible, tokens, probs, keep, threshold, picked):
    """Which eligible positions to reveal, given the proposed tokens (one row per predicted position)
    and the distributions they were drawn from; `keep` tokens stay masked after this step.
    picked: the random order's draw, made before the forward pass."""
    score = torch.full(eligible.shape, float("-inf"), device=eligible.device)
    if strategy != "random" or threshold is not None:
        score[eligible] = scores_for(strategy, probs, tokens).float()
    if strategy == "random":
        reveal = picked
    else:  # the highest scores, leaving `keep` masked
        n_reveal = (eligible.sum(1) - keep).clamp(min=0)
        rank = score.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # ties: the first
        reveal = eligible & (rank < n_reveal[:, None])
    if threshold is not None:  # and every confident token, at least one per step
        confident = torch.zeros_like(eligible)
        confident[eligible] = probs.gather(-1, tokens[:, None]).squeeze(-1) > threshold
        best = torch.zeros_like(eligible).scatter(1, score.argmax(1, keepdim=True), True) & eligible
        reveal |= confident | best
    return reveal


def scores_for(strategy, probs, tokens):
    """Higher = reveal first."""
    if strategy == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if strategy == "entropy":
        return (probs * probs.clamp_min(1e-30).log()).sum(-1)  # negative entropy
    return probs.gather(-1, tokens[:, None]).squeeze(-1)


def schedule(masked, starts, decoding, block):
    """(in_block (B, L), each row's steps (B,)) of each block in decoding order. Without model blocks: the
    semi-autoregressive blocks of --block-length, counted from each row's start (LLaDA). With them: the model's
    blocks of `block` columns that hold generated positions, each cut into sub-blocks of --block-length columns.
    A row shares the steps among the blocks it has tokens in, so that it decodes in a batch as it does alone."""
    length = int(masked.sum(1).max())  # the generated span (every row's)
    steps, columns = decoding.steps or length, torch.arange(masked.shape[1], device=masked.device)
    if block:  # a column's part: its model block, then its sub-block
        width = min(decoding.block_length or block, block)
        part = (columns // block * block + columns % block // width).expand_as(masked)
    else:  # a column's part: its sub-block, counted from its row's start
        width = decoding.block_length or length
        part = (columns - torch.tensor(starts, device=masked.device)[:, None]).div(width, rounding_mode="floor")
    parts = [part == p for p in part[masked].unique().tolist()]
    if not parts:  # nothing to generate
        return []
    counts = torch.stack([(masked & part).sum(1) for part in parts])  # (parts, B): each row's tokens in each
    has, n = counts > 0, (counts > 0).sum(0)  # each row's blocks
    if steps < int(n.max()):
        raise UserError(f"--steps {steps} is fewer than the {int(n.max())} blocks it must decode (raise --steps)")
    share = steps // n.clamp(min=1) + (has.cumsum(0) - 1 < steps % n.clamp(min=1))  # the first blocks get the rest
    if block:  # enough steps: one token per step
        share = torch.minimum(counts, torch.where(steps >= counts.sum(0), counts, share))
    return list(zip(parts, torch.where(has, share, 0)))


def valid_logits(logits, mask_id, vocab):
    """Never produce the mask token or ids beyond the tokenizer (vocabulary padding). Edits logits in place."""
    logits = logits[:, :vocab] if vocab else logits
    if mask_id < logits.shape[-1]:
        logits[:, mask_id] = float("-inf")
    return logits


class Denoiser:
    """The model's logits at the positions asked for, as cheaply as is exact (or, with cache=True, approximately).

    Exact: a step with nothing revealed since the last pass reuses it (no time input: the output would repeat).
    cache (approximate): every position's keys and values are computed at the start of each block; later passes
    recompute only the block's masked positions, the tokens revealed since the last pass and those whose logits
    are needed, and read the rest from the cache: prompt, suffix, other blocks (Fast-dLLM's dual cache) and
    tokens decoded earlier (dKV-Cache).
    """

    def __init__(self, model, real, trained, cache):
        self.model, self.trained, self.attn = model, trained, key_mask(real)
        self.kv = model.make_cache(*real.shape) if cache else None
        self.logits, self.fresh, self.forwards = None, True, 0
        self.stale = torch.zeros_like(real)  # revealed since the last pass

    def new_block(self, x, in_block):
        self.fresh = True

    def __call__(self, x, predict, eligible):
        if self.logits is None:
            where = predicting(predict, self.trained.shift)
            if self.kv is None or self.fresh:
                out = self.model(x, attn=self.attn, where=where, cache=self.kv)
            else:
                cols = (eligible | self.stale | where).any(0).nonzero().squeeze(1)
                out = self.model(x[:, cols], attn=self.attn, where=where[:, cols], cache=self.kv, positions=cols)
            self.logits = valid_logits(out, self.trained.mask_id, self.trained.vocab)
            self.fresh, self.forwards, self.stale = False, self.forwards + 1, torch.zeros_like(self.stale)
        return self.logits

    def revealed(self, reveal):
        self.stale |= reveal
        if reveal.any():
            self.logits = None


class BlockCache:
    """A block-diffusion model's logits at the positions asked for, exactly, over a KV cache.

    The blocks before the current one are clean and in the cache, each written once with the attention it had in
    training (a clean token sees the clean tokens of its own and the earlier blocks, or with keeps_ar those before
    it), so a step forwards only the
    current block's columns, against the cache and the block. The first token of a block is predicted by the
    logit of the clean column before it (the shift across a block boundary, as in training), kept from the pass
    that wrote that column. exact_cache=False: the plain version, the tests' reference, which forwards the whole
    sequence twice, [x ; x], under training's mask (model.allowed) at every step.
    """

    def __init__(self, model, real, block, trained, exact_cache=True):
        self.model, self.real, self.block, self.trained = model, real, block, trained
        self.kv = model.make_cache(*real.shape) if exact_cache else None
        self.cached, self.edge, self.logits, self.forwards = 0, None, None, 0

    def new_block(self, x, in_block):
        """A block begins: [its first column, the end of its model block); the finished columns go into the cache."""
        first = int(in_block.any(0).nonzero()[0])
        lo = first - first % self.block
        self.hi = min(lo + self.block, x.shape[1])
        if self.kv is not None and lo > self.cached:  # clean blocks [cached, lo): one pass writes their keys and values
            q, k = torch.arange(self.cached, lo, device=x.device), torch.arange(lo, device=x.device)
            L = x.shape[1]  # training's rule for clean queries and keys, the clean half at L..2L-1
            clean = allowed(q[:, None] + L, k + L, L, self.block, ar=self.trained.keeps_ar)
            attn = clean & self.real[:, None, None, :lo]  # (B, 1, T, lo)
            last = torch.zeros(x.shape[0], lo - self.cached, dtype=torch.bool, device=x.device)
            last[:, -1] = True
            edge = self.model(x[:, self.cached : lo], attn=attn, where=last, cache=self.kv, positions=q)
            self.edge, self.cached, self.forwards = edge[:, None], lo, self.forwards + 1
        self.block_start, self.logits = lo, None

    def __call__(self, x, predict, eligible):
        if self.logits is None:
            lo, hi, shift = self.block_start, self.hi, self.trained.shift
            where = predicting(predict, shift)  # the logit that predicts each predicted position
            first = predict[:, lo] & shift if lo > 0 else torch.zeros_like(predict[:, 0])  # from the clean column
            inside = where[:, lo:hi].clone()
            if self.kv is not None:
                out, edge = torch.empty(0, self.model.cfg.vocab_size, device=x.device), self.edge  # edge[b]: (1, V)
                if inside.any():  # (B = 1: a block's one token is predicted from the cache alone)
                    attn = self.real[:, None, None, :hi]  # the cache up to the block's end, less padding
                    positions = torch.arange(lo, hi, device=x.device)
                    out = self.model(x[:, lo:hi], attn=attn, where=inside, cache=self.kv, positions=positions)
                    self.forwards += 1
            else:  # [x ; x] under training's mask: the noisy block reads its own columns and the clean ones before it
                attn, ar = key_mask(self.real), self.trained.keeps_ar
                inputs, both, attn, positions = with_clean_copy(x, x, where, attn, self.block, shift, ar)
                pieces = self.model(inputs, attn=attn, where=both, positions=positions).split(both.sum(1).tolist())
                out = torch.cat([p[: len(p) - int(f)] for p, f in zip(pieces, first)])  # the block's own columns
                edge = {b: p[-1:] for b, (p, f) in enumerate(zip(pieces, first)) if f}  # the clean column before it
            pieces, rows = out.split(inside.sum(1).tolist()), []
            for b, piece in enumerate(pieces):  # each row's predictions in column order: the block's first first
                rows += [edge[b]] if first[b] else []
                rows.append(piece)
            self.logits = valid_logits(torch.cat(rows), self.trained.mask_id, self.trained.vocab)
            self.forwards += self.kv is None
        return self.logits

    def revealed(self, reveal):
        if reveal.any():
            self.logits = None


# ---------------------------------------------------------------------------------------------
# AR decoding, also self-speculative: a block-diffusion model drafts, its AR mode verifies (TiDAR)


@torch.no_grad()
def generate_ar(model, prefixes, length, trained, *, seeds, sampling=Sampling(), drafter=None):
    """AR sampling with a KV cache -> ([tokens of each row: its prefix + what it generated], forward passes,
    [draft tokens accepted, each time a row had a draft]).

    One prefill of the right-padded prompts; then each pass reads each row's newest token at its own position and
    attends to its slots up to there (its padding is overwritten before it is attended to). Row b draws from
    seeds[b]. Stops after `length` tokens, or once every row has produced trained.eos_id.
    drafter: (a block-diffusion model, its Trained), blocks of B: model itself for its own AR mode (train.py
    --ar-weight), or another with the same tokenizer. A pass then reads the newest token and the row's draft of
    the B - 1 after it causally, where the AR logits accept a prefix of the draft and give the token after it
    (verify: the output is exactly AR sampling's), then B mask tokens, a noisy block whose logits draft the B - 1
    tokens after the next one, valid if the whole draft is accepted. A pass yields 1 to B tokens.
    """
    device, B = model.tok_emb.weight.device, len(prefixes)
    draft_model, drafting = drafter or (None, None)
    K, D = (drafting.block, drafting.block) if drafter else (1, 0)  # tokens read causally, then mask tokens
    x, real = pad_right(prefixes, device)
    P, ends = x.shape[1], [len(p) + length for p in prefixes]  # the longest prompt; each row's last length
    models = [model] + ([draft_model] if draft_model not in (None, model) else [])
    slots = torch.arange(P + length + K + D, device=device)
    caches = [m.make_cache(B, len(slots)) for m in models]
    prompt, newest = slots[:P], real.sum(1, keepdim=True) - 1
    logits = [m(x, attn=prompt[:, None] >= prompt, where=prompt == newest, cache=c) for m, c in zip(models, caches)]
    ar, drafted, forwards = logits[0].split(1), [None] * B, len(models)  # each row's AR logits and draft logits
    streams, out, drafts, q, accepted = Streams(seeds, device), [list(p) for p in prefixes], [[]] * B, [None] * B, []
    ended = [False] * B
    while True:
        for b, g in enumerate(streams.generators):  # verify each row's draft: 1 to K new tokens
            if len(out[b]) < ends[b]:
                logits, draft = valid_logits(ar[b], trained.mask_id, trained.vocab), drafts[b]
                a, token = verify(logits, torch.tensor(draft, device=device), q[b], sampling, g)
                out[b], accepted = (out[b] + draft[:a] + [token])[: ends[b]], accepted + ([a] if draft else [])
                ended[b] |= trained.eos_id in draft[:a] + [token]
                drafts[b], q[b] = [], None
                if a == len(draft) and drafted[b] is not None:  # the noisy block's draft holds: it followed all
                    mine = valid_logits(drafted[b][:, : logits.shape[-1]], drafting.mask_id, drafting.vocab)
                    new, q[b] = sample_tokens(mine, sampling, g)  # q over the verifier's vocabulary
                    drafts[b] = new.tolist()
        if all(e or len(o) >= end for e, o, end in zip(ended, out, ends)):
            return out, forwards, accepted
        # the next pass: each row's newest token and its draft read causally, then D mask tokens (the noisy block)
        c, columns = torch.tensor([[1 + len(d)] for d in drafts], device=device), slots[: K + D]  # c: read causally
        causal, noisy = columns < c, (columns >= c) & (columns < c + D)
        tokens = torch.full((B, K + D), drafting.mask_id if drafter else 0, device=device)
        for b, (o, d) in enumerate(zip(out, drafts)):
            tokens[b, : 1 + len(d)] = torch.tensor([o[-1], *d])
        newest = torch.tensor([[len(o) - 1] for o in out], device=device)
        positions = (newest + columns).clamp(max=model.cfg.block_size - 1)  # GPT-2's position table ends there
        seen = torch.where(noisy, positions[:, :1] + c + D - 1, positions)  # a noisy query sees its whole block
        attn = (slots <= seen[..., None])[:, None]  # (B, 1, K + D, S)
        drafts_at = noisy & (columns < c + D - 1)  # (the last noisy logit would predict past the block)
        for m, cache in zip(models, caches):  # the AR logits, and the next draft: one pass, or one each
            want = causal & (m is model) | drafts_at & (m is draft_model)
            inputs = tokens if m is draft_model else tokens.masked_fill(~causal, 0)  # the drafter's mask tokens
            pieces = m(inputs, attn=attn, where=want, cache=cache, positions=positions).split(want.sum(1).tolist())
            ar = [p[:n] for p, n in zip(pieces, c.squeeze(1).tolist())] if m is model else ar
            drafted = [p[len(p) - D + 1 :] for p in pieces] if m is draft_model else drafted
        forwards += len(models)


def verify(logits, drafts, q, sampling, generator=None):
    """Speculative sampling's rule (Leviathan et al. 2023) for one row -> (drafts accepted, the token after them).

    logits (k + 1, V): the AR model's at the newest token and at each of the k drafts; drafts (k,), drawn from q
    (k, V). Draft j is accepted with probability min(1, p(d) / q(d)), p the AR model's sampling distribution; the
    token after the accepted ones is drawn from norm(max(p - q, 0)) at a rejection, else from p. Whatever the
    drafts, the tokens come out distributed as AR sampling's. Greedy: the drafts equal to the AR argmax, then it.
    """
    k = len(drafts)
    if sampling.greedy:
        best = logits.softmax(-1).argmax(-1)
        a = int((best[:k] == drafts).long().cumprod(0).sum())
        return a, int(best[a])
    p = sampling_probs(logits, sampling)
    for j, d in enumerate(drafts.tolist()):
        if torch.rand(1, generator=generator, device=p.device) * q[j, d] >= p[j, d]:  # rejected
            residual = (p[j] - q[j]).clamp(min=0)
            return j, int(draw((residual if residual.sum() > 0 else p[j])[None], generator))
    return k, int(draw(p[k:], generator))


def decode(model, trained, rows, length, decoding, *, seeds, ar=None, on_step=None, drafter=None):
    """Decode as the checkpoint was trained -> ([the generated ids of each row], forward passes, [drafts accepted]).

    AR sampling for an AR checkpoint (it continues the prefix: it cannot see a suffix), else diffusion
    decoding; ar=True / False decodes the other way. drafter: AR sampling with its drafts (generate_ar)."""
    prefixes = [p for p, _ in rows]
    if drafter or (trained.objective == "ar" if ar is None else ar):
        out, forwards, accepted = generate_ar(
            model, prefixes, length, trained, seeds=seeds, sampling=decoding.sampling, drafter=drafter
        )
        return [ids[len(p) :] for ids, p in zip(out, prefixes)], forwards, accepted
    x, forwards = generate_batch(model, rows, length, decoding, trained, seeds=seeds, on_step=on_step)
    return [row[len(p) : len(p) + length].tolist() for row, p in zip(x, prefixes)], forwards, []


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    # what to generate
    a("--ckpt", required=True, type=Path, help="checkpoint directory")
    a("--prompt", default="", help="text before the generated part (its special tokens, <|im_start|>, read as such)")
    a("--prompt-file", type=Path, help="read the prompt from a file")
    a("--prompts", type=Path, help='many prompts, one a line (a JSON object: {"prompt", "suffix"?}); in batches')
    a("--batch-size", type=COUNT, default=16, help="rows (samples of prompts) decoded together")
    a("--output", type=output_file, help="one JSON line per sample, written as batches finish (README)")
    a("--suffix", default="", help="text after the generated part (infilling)")
    a("--length", type=COUNT, default=128, help="tokens to generate")
    a("--num-samples", type=COUNT, default=1, help="samples of the same prompt, decoded together")
    a("--seed", type=int, default=0, help="sampling seed")
    # how: the defaults are the official inference script's (64 steps, temperature 0.95, top-p 0.9) in the
    # confidence order, which gives text where its random order gives noise on a small model (README)
    a("--steps", type=COUNT, default=64, help="denoising steps T (at most --length)")
    a("--strategy", choices=STRATEGIES, default="confidence", help="which masked tokens a step reveals")
    a("--temperature", type=POSITIVE, default=0.95, help="softmax temperature (1 with --top-p 1: unbiased)")
    a("--top-k", type=NON_NEGATIVE, default=0, help="keep the k most probable tokens (0: all)")
    a("--top-p", type=PROBABILITY, default=0.9, help="nucleus: keep the most probable tokens up to this mass (1: all)")
    a("--greedy", action="store_true", help="always the most probable token")
    a("--threshold", type=PROBABILITY, help="also reveal every token with probability above this (0, 1]")
    a("--block-length", type=NON_NEGATIVE, default=0, help="semi-autoregressive blocks of this many tokens")
    a("--cache", action="store_true", help="approximate: reuse the keys/values of settled positions (Fast-dLLM)")
    a("--ar", action="store_true", help="plain autoregressive sampling with a KV cache")
    a("--diffusion", action="store_true", help="decode an AR checkpoint by diffusion all the same (unadapted: noise)")
    a("--speculative", action="store_true", help="--ar's output, faster: a block model drafts, the AR mode verifies")
    a("--verifier", type=Path, help="--speculative, verified by this AR checkpoint (its --ar output)")
    # output and system
    a("--show", action="store_true", help="draw the denoising as it happens (standard error)")
    cli.add_device_options(p)
    a("--compile", action="store_true", help="torch.compile the model (GPU; worth it for long or many decodes)")
    args, given = p.parse_args(argv), set(cli.given_options(p, argv))
    args.steps = min(args.steps, args.length)  # more steps than tokens: the extra ones would reveal nothing
    args.speculative |= args.verifier is not None
    args.ar |= args.speculative  # AR decoding, with drafts
    inert = sorted(given & ((DIFFUSION_ONLY if args.ar else set()) | (SAMPLING if args.greedy else set())))
    if inert:  # an option that does nothing in the chosen mode is refused, not ignored
        mode = "--greedy" if inert[0] in SAMPLING else "AR decoding (--ar, --speculative)"
        raise UserError(f"--{inert[0].replace('_', '-')} does nothing with {mode}")
    not_an_input(args.output, args.prompts, args.prompt_file, args.ckpt)
    if args.prompt_file and args.prompt:
        raise UserError("--prompt and --prompt-file both give the prompt: drop one")
    if args.prompt_file:
        args.prompt = read_text(args.prompt_file, "--prompt-file")
    if args.prompts and (args.prompt or args.prompt_file or args.suffix):
        raise UserError("--prompts gives the prompts (and suffixes): drop --prompt, --prompt-file and --suffix")
    args.items = read_prompts(args.prompts) if args.prompts else [(args.prompt, args.suffix, None)]
    if args.ar and any(suffix for _, suffix, _ in args.items):
        raise UserError("a suffix (--suffix, or in --prompts) needs diffusion decoding: drop --ar")
    args.device = cli.pick_device(args.device)
    args.dtype = cli.pick_dtype(args.dtype, args.device)
    return args


def main(argv=None):
    args = parse_args(argv)
    model, meta = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
    if args.compile:  # minutes before the first token, on a CPU too: worth it for long or many decodes
        print(f"compiling the model for {args.device.type} (the first pass takes minutes)", file=sys.stderr)
        model = compile_model(model, dynamic=True)  # dynamic: each step asks for logits at a different count
    tok = load_tokenizer(args.ckpt, meta)
    encoded = []  # (prefix ids, suffix ids) of each prompt
    for prompt, suffix, line in args.items:
        prefix, suffix_tokens = tok.encode(prompt, bos=True, special=True), tok.encode_suffix(prompt, suffix)
        total, where = len(prefix) + args.length + len(suffix_tokens), f"{args.prompts}:{line}: " if line else ""
        if not prefix:  # nothing to continue from: this tokenizer adds no BOS (SmolLM2's)
            raise UserError(f"{where}the prompt is empty, and {args.ckpt}'s tokenizer adds no BOS: give a prompt")
        if total > model.cfg.block_size:
            sizes = f"prompt ({len(prefix)}) + length ({args.length}) + suffix ({len(suffix_tokens)}) = {total} tokens"
            raise UserError(f"{where}{sizes} exceeds the model's context of {model.cfg.block_size}")
        encoded.append((prefix, suffix_tokens))
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.greedy)
    decoding = Decoding(args.steps, args.strategy, sampling, args.threshold, args.block_length, args.cache)
    trained, drafter = Trained.of(meta, tok.n_vocab, tok.eos_id), None
    if args.speculative:  # the checkpoint drafts; its AR mode, or --verifier's model, decodes
        if trained.block < 2 or not trained.shift:
            raise UserError(f"--speculative drafts with a block-diffusion checkpoint, and {args.ckpt} is not one")
        if not trained.keeps_ar and not args.verifier:
            print(f"note: {args.ckpt} was trained without --ar-weight: its AR mode is not its parent", file=sys.stderr)
        drafter = (model, trained)
        if args.verifier:
            model, meta = load_checkpoint(args.verifier, device=args.device, dtype=args.dtype)
            if load_tokenizer(args.verifier, meta).n_vocab != tok.n_vocab:
                raise UserError(f"--verifier {args.verifier} has another tokenizer than {args.ckpt}")
            trained = Trained.of(meta, tok.n_vocab, tok.eos_id)
            if trained.objective != "ar" and not trained.keeps_ar:  # a diffusion model's AR reading verifies nothing
                raise UserError(f"--verifier {args.verifier} is not an AR checkpoint (nor trained with --ar-weight)")
    block = 0 if args.ar else trained.block
    if block and (args.cache or any(suffix for _, suffix in encoded) or args.block_length > block):
        what = "--cache: its cache is exact, and always on" if args.cache else "suffix: its blocks see only the past"
        what = f"--block-length over {block}: a block is decoded whole" if args.block_length > block else what
        raise UserError(f"{args.ckpt} is a block-diffusion checkpoint (blocks of {block}), so no {what}")
    if meta["objective"] == "ar" and not args.ar and not args.diffusion:  # unadapted, it decodes noise
        raise UserError(f"{args.ckpt} is an AR checkpoint: sample it with --ar, or pass --diffusion to decode it so")
    if not args.ar:  # too few steps for the blocks a span crosses: refused before any work, by the schedule itself
        starts, width = [len(p) for p, _ in encoded], max(len(p) + args.length + len(s) for p, s in encoded)
        schedule(span_mask(starts, args.length, width), starts, decoding, trained.blocks_in(width))
    if args.ar and meta["objective"] != "ar" and not (args.speculative or trained.keeps_ar):
        print(f"note: {args.ckpt} was trained with the diffusion objective, decoding autoregressively", file=sys.stderr)

    # decode every sample of every prompt, in batches; row (i, s) is sample s of prompt i, from its own stream. Each
    # batch is written when done: texts on standard output, or JSON lines to --output (OUTPUT.partial until the end)
    show = Show(tok, args.steps) if args.show else None
    rows = [(i, s) for i in range(len(encoded)) for s in range(args.num_samples)]
    n, passes, total_passes, drafts, t0 = 0, 0, 0, [], time.perf_counter()  # passes: summed over rows
    bar = cli.progress_bar(total=len(rows), unit="sample", disable=len(rows) <= args.batch_size)
    with growing_file(args.output) if args.output else contextlib.nullcontext(sys.stdout) as out:
        for first in range(0, len(rows), args.batch_size):
            batch = rows[first : first + args.batch_size]
            seeds = [mix(args.seed, i, s) for i, s in batch]  # a sample draws the same in any batch
            prompts = [encoded[i] for i, _ in batch]
            generated, forwards, accepted = decode(
                model, trained, prompts, args.length, decoding, seeds=seeds, ar=args.ar, on_step=show, drafter=drafter
            )
            n, drafts = n + sum(map(len, generated)), drafts + accepted
            passes, total_passes = passes + forwards * len(batch), total_passes + forwards
            for k, ((i, _), ids) in enumerate(zip(batch, generated)):
                text = tok.render(encoded[i][0], ids, encoded[i][1])
                record = {"prompt": args.items[i][0], "suffix": args.items[i][1], "text": text}
                record |= {"tokens": until_eos(ids, tok.eos_id), "batch_forward_passes": forwards}  # alone: fewer
                out.write(json.dumps(record) + "\n" if args.output else f"\n\n{'-' * 40}\n\n" * (first + k > 0) + text)
            out.flush()
            bar.update(len(batch))
    bar.close()
    print(end="" if args.output else "\n")
    elapsed = time.perf_counter() - t0
    said = f"{n} tokens in {elapsed:.2f} s ({n / elapsed:,.1f} tokens/s), {total_passes} forward passes"
    if args.speculative:  # a pass reads each row's draft: what it yields is per row
        said += f", {n / passes:.2f} tokens per pass and row; drafts of {drafter[1].block - 1} tokens, "
        said += f"{sum(drafts) / max(1, len(drafts)):.2f} accepted on average"
    print(said, file=sys.stderr)


if __name__ == "__main__":
    cli.run_main(main)  # an error is one line; `| head` stops it quietly
