"""One Transformer that is exactly GPT-2 or exactly LLaMA, depending on its config.

The same weights serve three attention modes, which is the whole trick of adapting an
AR model into a diffusion LM:
    attn="causal"   the original autoregressive model
    attn="full"     bidirectional attention: the diffusion model
    attn=<bool L×L> an explicit allowed-mask (True = may attend), used while annealing
The model has no time embedding: a masked-diffusion denoiser is not told t.

A checkpoint is a directory: config.json, model.safetensors and the tokenizer files.
"""

import json
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


class UserError(Exception):
    """A problem with the user's input; scripts print it as one line and exit non-zero."""


@dataclass
class ModelConfig:
    arch: str = "gpt2"  # "gpt2": learned positions, LayerNorm, GELU, biases | "llama": RoPE, RMSNorm, SwiGLU
    vocab_size: int = 50258  # GPT-2's 50257 plus the mask token
    block_size: int = 1024  # maximum sequence length (learned positions / RoPE range)
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # grouped-query attention; 0 means n_head
    n_embd: int = 768
    head_dim: int = 0  # 0 means n_embd // n_head
    ffn_dim: int = 0  # hidden size of the MLP; 0 means 4 * n_embd
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.arch not in ("gpt2", "llama"):
            raise UserError(f"unknown arch {self.arch!r} (expected 'gpt2' or 'llama')")
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.ffn_dim = self.ffn_dim or 4 * self.n_embd
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


def rope_cos_sin(positions, head_dim, theta):
    """cos/sin tables in the Hugging Face rotate-half layout, computed in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def anneal_hash(q, k, seed):
    """A 32-bit integer hash of (seed, query, key): the annealing mask's Bernoulli draw.

    The same numbers whether the mask is materialised for SDPA or computed inside FlexAttention's
    mask_mod, which never builds an L×L tensor on the GPU.
    """
    x = (q.long() * 65537 + k.long() + seed * 0x9E3779B1) % 2**32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) % 2**32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) % 2**32
    return x ^ (x >> 16)


_flex_attention = None


def flex_attention(q, k, v, block_mask, enable_gqa):
    """FlexAttention, compiled: inside a torch.compile'd model as part of its graph, else compiled once
    on its own (eager FlexAttention is a slow reference)."""
    global _flex_attention
    from torch.nn.attention import flex_attention as fa

    if torch.compiler.is_compiling() or not q.is_cuda:
        return fa.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    if _flex_attention is None:
        _flex_attention = torch.compile(fa.flex_attention)
    return _flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        bias = cfg.arch == "gpt2"
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=bias)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=bias)

    def forward(self, x, attn, rope, cache, start):
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # keys/values of other positions: AR decoding, or the approximate diffusion cache
            scattered = isinstance(start, torch.Tensor)  # the positions of x's columns, not the first of a run
            at = start if scattered else slice(start, start + T)
            cache["k"][:B, :, at] = k
            cache["v"][:B, :, at] = v
            if not scattered:
                cache["len"] = max(cache.get("len", 0), start + T)
            k, v = cache["k"][:B, :, : cache["len"]], cache["v"][:B, :, : cache["len"]]
        gqa = self.n_kv_head != self.n_head
        if isinstance(attn, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, enable_gqa=gqa)
        elif attn == "full":
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        elif attn == "causal":
            if start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            else:  # queries start..start+T-1 against keys 0..start+T-1
                allowed = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=gqa)
        else:  # FlexAttention, the annealing mask on GPU (imported here: the module is slow to import)
            from torch.nn.attention.flex_attention import BlockMask

            if not isinstance(attn, BlockMask):
                raise ValueError(f"attn must be 'causal', 'full', a boolean mask or a BlockMask, got {attn!r}")
            y = flex_attention(q, k, v, block_mask=attn, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.swiglu = cfg.arch == "llama"
        bias = not self.swiglu
        # For SwiGLU, `up` holds the gate and the up projection stacked: one matmul instead of two.
        self.up = nn.Linear(cfg.n_embd, cfg.ffn_dim * (2 if self.swiglu else 1), bias=bias)
        self.down = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=bias)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(self.up(x), approximate="tanh"))


def make_norm(cfg):
    if cfg.arch == "gpt2":
        return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm, self.attn = make_norm(cfg), Attention(cfg)
        self.mlp_norm, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x, attn, rope, cache=None, start=0):
        x = x + self.attn(self.attn_norm(x), attn, rope, cache, start)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.arch == "gpt2" else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.checkpointing = False  # activation checkpointing, set by train.py
        self.apply(self._init_weights)
        for block in self.layers:  # GPT-2 scales the projections into the residual stream
            for proj in (block.attn.wo, block.mlp.down):
                nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        """GPT-2's initialisation, for --reinit (training from scratch); converted weights overwrite it."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, attn="causal", where=None, cache=None, start=0):
        """idx (B, L) token ids -> float logits (B, L, vocab).

        attn: "causal", "full", a boolean (L, L) allowed-mask (True = may attend) or a FlexAttention BlockMask.
        where: optional boolean (B, L); logits are then computed only there and returned as
            (N, vocab) in row-major order. The vocabulary projection is a large share of the
            FLOPs, and training and decoding need logits only at masked targets.
        cache, start: KV cache (from make_cache) and the position of idx[:, 0]. idx's keys and values
            are written at start..start+L and attention covers every position written so far.
            start may instead be a LongTensor (L,) of idx's positions, for recomputing some positions
            of a sequence already in the cache (sample.py's approximate cache; attn="full" only).
        """
        B, L = idx.shape
        if isinstance(start, torch.Tensor):
            positions = start
        elif start + L > self.cfg.block_size:
            raise ValueError(f"sequence of {start + L} tokens exceeds the model's block_size {self.cfg.block_size}")
        else:
            positions = torch.arange(start, start + L, device=idx.device)
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:
            rope = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        for i, layer in enumerate(self.layers):
            layer_cache = cache[i] if cache is not None else None
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, attn, rope, use_reentrant=False)
            else:
                x = layer(x, attn, rope, layer_cache, start)
        if where is not None:
            x = x[where]
        return self.lm_head(self.norm(x)).float()

    def make_cache(self, batch_size, max_len, device=None, dtype=None):
        """Preallocated key/value buffers, one pair per layer (AR decoding; sample.py's --cache)."""
        p = self.tok_emb.weight
        shape = (batch_size, self.cfg.n_kv_head, max_len, self.cfg.head_dim)
        new = lambda: torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)  # noqa: E731
        return [{"k": new(), "v": new()} for _ in self.layers]

    def num_params(self, embeddings=True):
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if not embeddings:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n

    def flops_per_token(self, seq_len, logit_fraction=1.0):
        """Training FLOPs (forward + backward = 3 × forward) per token at sequence length seq_len.

        Matmuls cost 2 FLOPs per weight per token; attention scores and values add
        2 × 2 × n_layer × seq_len × n_head × head_dim. logit_fraction is the share of positions
        whose logits are computed (training computes them only at masked targets).
        """
        cfg = self.cfg
        head = cfg.vocab_size * cfg.n_embd
        body = self.num_params(embeddings=False) - (0 if cfg.tie_embeddings else head)
        attention = 2 * cfg.n_layer * seq_len * cfg.n_head * cfg.head_dim
        return 3 * (2 * body + 2 * head * logit_fraction + 2 * attention)


# ---------------------------------------------------------------------------------------------
# Checkpoint directories

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@contextmanager
def atomic_dir(path, overwrite=False):
    """Yield a temporary directory that becomes `path` only once the block succeeds.

    A crash leaves the old `path` (or nothing) behind, never a half-written one that looks valid.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists (pass --force to overwrite it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # the data must be on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o666 & ~umask)  # safetensors writes owner-only files
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def save_checkpoint(path, model, meta, tokenizer_from, overwrite=False, extra=None):
    """Write a checkpoint directory atomically.

    model: a Transformer or a {name: tensor} state dict in our naming. meta: the config.json
    content; meta["model"] is filled from a Transformer. tokenizer_from: a checkpoint
    directory to copy meta["tokenizer"]["files"] from, or a {name: source path} map.
    extra: {filename: writer(path)} for more files (train.py's optimizer state).
    """
    from safetensors.torch import save_file

    if isinstance(model, Transformer):
        meta = {**meta, "model": asdict(model.cfg)}
        state = model.state_dict()
    else:
        state = model
    tied = meta["model"].get("tie_embeddings", True)
    tensors = {k: v.detach().contiguous() for k, v in state.items() if not (tied and k == "lm_head.weight")}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        for name in meta["tokenizer"]["files"]:
            src = tokenizer_from[name] if isinstance(tokenizer_from, dict) else Path(tokenizer_from) / name
            shutil.copyfile(src, tmp / name)
        for name, write in (extra or {}).items():
            write(tmp / name)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(path):
    """Parse and check a checkpoint's config.json, with a one-line error for each problem."""
    path = Path(path)
    if not path.exists():  # a crash between atomic_dir's two renames leaves the old one whole
        for previous in sorted(path.parent.glob(f".{path.name}.old-*"))[-1:]:
            previous.rename(path)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a directory")
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} has no {CONFIG_FILE}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path / CONFIG_FILE} is not valid JSON: {e}") from None
    for key in ("model", "objective", "mask_token_id", "eos_token_id", "tokenizer"):
        if key not in meta:
            raise UserError(f"{path / CONFIG_FILE} lacks {key!r}: not a checkpoint written by convert.py or train.py")
    if not 0 <= meta["mask_token_id"] < meta["model"]["vocab_size"]:
        raise UserError(f"{path / CONFIG_FILE}: mask_token_id {meta['mask_token_id']} is outside the vocabulary")
    for name in meta["tokenizer"].get("files", []):
        if not (path / name).is_file():
            raise UserError(f"checkpoint {path} lacks its tokenizer file {name}")
    return meta


def load_state(path, cfg):
    """Read model.safetensors, checking every tensor's name and shape against cfg."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise UserError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        state = load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is corrupted or truncated: {e}") from None
    expected = expected_shapes(cfg)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise UserError(f"{file} does not match its config: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    for k, v in state.items():
        if v.shape != expected[k]:
            raise UserError(f"{file}: tensor {k} has shape {tuple(v.shape)}, the config says {tuple(expected[k])}")
    return state


def expected_shapes(cfg):
    """Name -> shape of every stored tensor for cfg, without allocating the model."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return {k: v.shape for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}


def load_checkpoint(path, device="cpu", dtype=torch.float32):
    """Load a checkpoint directory -> (model in eval mode, meta = parsed config.json)."""
    meta = read_meta(path)
    cfg = ModelConfig.from_dict(meta["model"])
    state = load_state(path, cfg)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(state, strict=False, assign=True)  # keys were checked by load_state
    if cfg.tie_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.lm_head.weight = model.tok_emb.weight
    return model.to(device=device, dtype=dtype).eval(), meta
