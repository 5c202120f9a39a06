"""The token shards of data/prepare.py, as train.py reads them: random windows (pre-training) or rows (SFT).

check_data() refuses, before any work, a data folder that does not fit the checkpoint: a missing or
truncated shard, another tokenizer, windows longer than the model's positions.
"""

import json
from pathlib import Path

import numpy as np
import torch

from model import EPS, mix, noise_levels
from support.cli import UserError
from tokenizer import fingerprint

EVAL_SEED = 1234  # evaluation noise is the same in every run, so numbers compare across runs


class Data:
    """Token shards from data/prepare.py, read as one sequence: random windows (pre-training) or rows (SFT).

    The shards are memory-mapped and joined end to end with int64 offsets (corpora beyond 4G tokens);
    a window may run across two shards, so the split into shards never changes the examples.
    """

    def __init__(self, data_dir, split, block_size):
        data_dir, info = Path(data_dir), json.loads((Path(data_dir) / "meta.json").read_text())
        self.sft, self.block_size = info["sft"], block_size
        shards = Data.shards(info, split)
        self.parts = [
            np.memmap(data_dir / s["file"], dtype=info["dtype"], mode="r", shape=(s["tokens"],)) for s in shards
        ]
        self.starts = np.cumsum([0] + [s["tokens"] for s in shards], dtype=np.int64)  # where each shard begins
        self.size = int(self.starts[-1])
        if self.sft:
            self.src_parts = [np.memmap(data_dir / s["src_file"], dtype=np.uint8, mode="r") for s in shards]
            self.row = info["block_size"]
            self.n = self.size // self.row
        else:
            self.n = self.size - block_size + 1  # window starts

    @staticmethod
    def shards(info, split):
        """[{"file", "tokens", "src_file"?}] of a split; data prepared before shards is one file per split."""
        if "shards" in info:
            return [s for s in info["shards"][split] if s["tokens"] > 0]
        return [{"file": f"{split}.bin", "tokens": info[f"{split}_tokens"], "src_file": f"{split}_src.bin"}]

    def read(self, parts, start, length):
        """Tokens [start, start + length) of the shards joined end to end."""
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while length > 0:
            piece = parts[k][start - self.starts[k] : start - self.starts[k] + length]
            pieces.append(piece)
            start, length, k = start + len(piece), length - len(piece), k + 1
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def repetition_note(self, tokens, data_dir):
        """A line for a run that reads `tokens` tokens of this data, when that is more than one epoch."""
        epochs = tokens / self.size
        if epochs <= 1:
            return None
        # Muennighoff et al. 2023: up to ~4 epochs are nearly as good as new tokens, then returns fall fast
        worse = "; beyond 4 repeated tokens are worth far less than new ones (prepare more)" if epochs > 4 else ""
        return f"note: this run reads {tokens:,} tokens, {epochs:.1f} epochs of the {self.size:,} in {data_dir}{worse}"

    def example(self, i):
        """(tokens, maskable) of example i: window start i (pre-training) or row i (SFT)."""
        if self.sft:
            x = torch.from_numpy(self.read(self.parts, i * self.row, self.row).astype(np.int64))
            maskable = torch.from_numpy(self.read(self.src_parts, i * self.row, self.row) == 0)
        else:
            x = torch.from_numpy(self.read(self.parts, i, self.block_size).astype(np.int64))
            maskable = torch.ones(self.block_size, dtype=torch.bool)
        maskable[0] = False  # the anchor: never noised, as BOS at decoding time
        return x, maskable

    def batch(self, indices, ts, seeds, device):
        """Stack examples -> (x, maskable, t, noise): the uniforms in noise decide which tokens are masked."""
        xs, ms, noise = [], [], []
        for i, s in zip(indices, seeds):
            x, m = self.example(i)
            xs.append(x)
            ms.append(m)
            noise.append(torch.rand(len(x), generator=torch.Generator().manual_seed(s)))
        t = torch.tensor(ts, dtype=torch.float32)
        return [a.to(device, non_blocking=True) for a in (torch.stack(xs), torch.stack(ms), t, torch.stack(noise))]

    def train_batch(self, seed, step, micro_index, batch_size, device, stratified_over=0, blocks=1, masked_blocks=0.0):
        """Micro-batch `micro_index` of step `step`: every example drawn from its own (seed, step, example) stream.

        t ~ U(EPS, 1) per example; stratified_over=N (the step's N examples): one uniform u per step and
        example k's t at (u + k/N) mod 1, so that each step covers the levels evenly (MDLM's
        low-discrepancy sampler: the same expectation, less variance). blocks > 1 (block diffusion): one t
        per block, t (batch, blocks); the first drawn as above, the others after it (stratified: block j of
        example k at (u + (k + jN) / (N blocks)) mod 1). masked_blocks: each block with this probability at
        t = 1 instead, wholly masked (TiDAR's draft block), drawn after the rest."""
        indices, ts, seeds = [], [], []
        shared = float(torch.rand(1, generator=torch.Generator().manual_seed(mix(seed, step))))
        for b in range(batch_size):
            k = micro_index * batch_size + b
            g = torch.Generator().manual_seed(mix(seed, step, k))
            indices.append(int(torch.randint(self.n, (1,), generator=g)))
            u = [float(torch.rand(1, generator=g))]
            seeds.append(int(torch.randint(2**62, (1,), generator=g)))
            u += torch.rand(blocks - 1, generator=g, dtype=torch.float64).tolist()
            if stratified_over:
                u = [(shared + (k + j * stratified_over) / (stratified_over * blocks)) % 1.0 for j in range(blocks)]
            if masked_blocks:
                full = (torch.rand(blocks, generator=g, dtype=torch.float64) < masked_blocks).tolist()
                u = [1.0 if f else v for f, v in zip(full, u)]
            ts.append([EPS + (1 - EPS) * v for v in u] if blocks > 1 else EPS + (1 - EPS) * u[0])  # t ~ U(EPS, 1)
        return self.batch(indices, ts, seeds, device)

    def eval_examples(self, count):
        """Evenly spaced examples with t on a fixed grid over (EPS, 1): the same in every run."""
        indices = [k * max(1, self.n - 1) // max(1, count - 1) for k in range(count)] if count > 1 else [0]
        return indices, noise_levels(count), [mix(EVAL_SEED, k) for k in range(count)]


def check_data(data_dir, init_dir, init_meta, block_size, model_block_size):
    data_dir = Path(data_dir)
    if not (data_dir / "meta.json").is_file():
        raise UserError(f"data dir {data_dir} has no meta.json (make one with data/prepare.py)")
    try:
        info = json.loads((data_dir / "meta.json").read_text())
        itemsize = np.dtype(info["dtype"]).itemsize
        index = [shard for split in ("train", "val") for shard in Data.shards(info, split)]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{data_dir / 'meta.json'} is corrupt ({e}); make it again with data/prepare.py") from None
    for shard in index:
        f = data_dir / shard["file"]
        if not f.is_file() or shard["tokens"] == 0:
            raise UserError(f"{f} is missing or empty")
        if f.stat().st_size != shard["tokens"] * itemsize:
            raise UserError(
                f"{f} does not hold the {shard['tokens']:,} {info['dtype']} tokens meta.json says: truncated?"
            )
        src = data_dir / shard.get("src_file", "")
        if info["sft"] and (not src.is_file() or src.stat().st_size != shard["tokens"]):
            raise UserError(f"{src} (the SFT source mask of {f.name}) is missing or truncated")
    if info["tokenizer_fingerprint"] != fingerprint(init_dir, init_meta):
        raise UserError(
            f"{data_dir} was tokenized with another tokenizer than {init_dir}'s; "
            f"run data/prepare.py with --tokenizer {init_dir}"
        )
    if block_size > model_block_size:
        raise UserError(f"--block-size {block_size} is beyond the model's {model_block_size} positions")
    if info["sft"] and block_size != info["block_size"]:
        raise UserError(f"SFT data rows have {info['block_size']} tokens; --block-size must match")
    if not info["sft"] and min(info["train_tokens"], info["val_tokens"]) < block_size:
        raise UserError(f"{data_dir} has fewer tokens than --block-size {block_size} in train or val")
    return info
