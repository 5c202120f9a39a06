"""A batch of rows of different lengths, right-padded: where each row's tokens and generated span are, and the
attention mask that keeps every query off the padding (sample.py's decoders, lab/eval.py's scores)."""

import torch


def pad_right(rows, device):
    """Token lists -> (x (B, longest) padded on the right with 0, real (B, longest): where x holds a token)."""
    lengths = torch.tensor([len(ids) for ids in rows], device=device)
    x = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=device)
    for b, ids in enumerate(rows):
        x[b, : len(ids)] = torch.tensor(ids)
    return x, torch.arange(x.shape[1], device=device) < lengths[:, None]


def span_mask(starts, length, width, device="cpu"):
    """(B, width): True at each row's generated span, [start, start + length)."""
    columns, starts = torch.arange(width, device=device), torch.tensor(starts, device=device)[:, None]
    return (columns >= starts) & (columns < starts + length)


def key_mask(real):
    """Full attention to every real token and none to padding: a (B, 1, 1, L) mask, or "full" when nothing is padded."""
    return "full" if real.all() else real[:, None, None]
