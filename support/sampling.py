"""Drawing tokens from predicted distributions, for sample.py: temperature, top-k and top-p (its token set found
without sorting: nucleus(), with the textbook nucleus_by_sorting() beside it as the tests' reference), and each
row's own random stream, so that a row decodes in any batch as it does alone."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How a token is drawn from a predicted distribution."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1: no nucleus filtering
    greedy: bool = False  # always the most probable token


def sample_tokens(logits, sampling=Sampling(), generator=None):
    """logits (N, V) -> (tokens (N,), probabilities (N, V) they were drawn from)."""
    if sampling.greedy:
        probs = logits.softmax(-1)
        return probs.argmax(-1), probs
    probs = sampling_probs(logits, sampling)
    return draw(probs, generator), probs


def sampling_probs(logits, sampling):
    """The distribution that non-greedy sampling draws from: after temperature, top-k and top-p."""
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if sampling.top_p < 1.0:
        probs = probs * nucleus(probs, sampling.top_p)
        probs /= probs.sum(-1, keepdim=True)
    return probs


def draw(probs, generator=None):
    """A token from each row of probs (N, V) by inverse CDF: exact, and much cheaper than torch.multinomial."""
    cdf = probs.cumsum(-1)
    u = torch.rand(len(probs), 1, generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


class Streams:
    """Each row's own random numbers, from its generator (seeds[b]), drawn only while the row has work to do: a row
    draws what it would alone, so it decodes in any batch as it does alone."""

    def __init__(self, seeds, device, starts=(), length=0):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.starts, self.length = starts, length

    def uniforms(self, eligible):
        """Uniforms (B, L) over each row's generated span, for the rows that still have eligible positions."""
        u = torch.ones(eligible.shape, device=eligible.device)
        for b, (start, g) in enumerate(zip(self.starts, self.generators)):
            if eligible[b].any():
                u[b, start : start + self.length] = torch.rand(self.length, generator=g, device=eligible.device)
        return u

    def tokens(self, logits, counts, sampling):
        """sample_tokens for the (N, V) logits of several rows (counts[b] of them row b's), each from its stream."""
        chunks = zip(logits.split(counts), self.generators)
        pieces = [sample_tokens(chunk, sampling, g) for chunk, g in chunks if len(chunk)]
        return torch.cat([t for t, _ in pieces]), torch.cat([p for _, p in pieces])


def nucleus_by_sorting(probs, top_p):
    """Boolean (N, V): the most probable tokens whose mass first reaches top_p, plus every token tied
    with the least probable of them. The textbook version, and nucleus()'s reference in the tests."""
    sorted_probs, order = probs.double().sort(-1, descending=True)
    prefix = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the mass before a token is not yet top_p
    inside = torch.zeros_like(prefix).scatter_(-1, order, prefix)
    least = torch.where(inside, probs, 2).min(-1, keepdim=True).values
    return inside | (probs >= least)


def nucleus(probs, top_p):
    """nucleus_by_sorting(probs, top_p), exact and without sorting: sorting 50k probabilities per
    position dominated decoding on CPU.

    Non-negative float32 values order as their bit patterns, so the edge value is found 11, 10 and
    10 bits at a time from histograms of the mass under each bit prefix (a radix select, sums in float64).
    """
    probs = probs.float()
    bits, mass_of = probs.view(torch.int32), probs.double()

    def edge(mass, above):  # the highest bin at or above which the mass reaches top_p; the mass above it
        at_or_above = mass.flip(1).cumsum(1).flip(1) + above
        b = ((at_or_above >= top_p).sum(1, keepdim=True) - 1).clamp(min=0)
        return b, (at_or_above - mass).gather(1, b)

    high = (bits >> 20).long()  # sign (always 0), exponent and the top 3 mantissa bits
    histogram = torch.zeros(len(probs), 1 << 11, dtype=torch.float64, device=probs.device)
    b, above = edge(histogram.scatter_add_(1, high, mass_of), 0)
    threshold = b << 20
    row, col = (high == b).nonzero(as_tuple=True)  # only the tokens in the edge bin are refined
    low, mass_of = bits[row, col].long(), mass_of[row, col]
    for shift in (10, 0):
        key = (low >> shift) & 1023
        histogram = torch.zeros(len(probs) * 1024, dtype=torch.float64, device=probs.device)
        b, above = edge(histogram.scatter_add_(0, row * 1024 + key, mass_of).view(len(probs), 1024), above)
        threshold |= b << shift
        inside = key == b[row, 0]
        row, low, mass_of = row[inside], low[inside], mass_of[inside]
    return bits >= threshold.int()
