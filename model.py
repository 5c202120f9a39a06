"""The attention-annealing diffusion transformer: DiffuGPT / DiffuLLaMA in one file.

Read top to bottom, this is Section 3 and Algorithm 1 of Gong et al. (ICLR 2025):
 1. The network. One Transformer that is exactly GPT-2 or exactly LLaMA, depending on its config.
    The same weights serve three attention modes, which is the whole trick of adapting an AR model:
        attn="causal"     the original autoregressive model
        attn="full"       bidirectional attention: the diffusion model
        attn=<mask>       causal OR a random part of the future, while annealing (a boolean L×L
                          mask for SDPA, or a FlexAttention BlockMask on the GPU)
    There is no time embedding: a masked-diffusion denoiser is not told t.
 2. The objective. Noising: each token becomes the mask token with probability t, t ~ U(EPS, 1).
    Shift: the logit at position i predicts token i+1, as in the AR model, so its head is reused as
    it is. Loss: cross-entropy where the target was masked, weighted by 1/t, divided by the number
    of masked targets; its expectation over t bounds the NLL (the ELBO).
 3. Attention annealing. At step s a query may attend to its causal past plus every other position
    with probability min(1, (s+1)/A); after A steps, full attention. Block diffusion (a block of B tokens at a
    time, the earlier ones clean) is the same method under one more mask rule, `allowed`; with `ar`, its clean
    half stays the AR model, which verifies the noisy half's drafts at decoding time (self-speculative).
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


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
    rope_scaling: float = 1.0  # LLaMA-3.1's RoPE scaling factor (1: none), with its three settings below
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    qkv_bias: bool = False  # Qwen2: biases on the query, key and value projections (LLaMA has none)
    tie_embeddings: bool = True

    def __post_init__(self):  # a 0 above means: derived from the other fields
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.ffn_dim = self.ffn_dim or 4 * self.n_embd


# ---------------------------------------------------------------------------------------------
# 1. The network


def rope_cos_sin(positions, cfg):
    """cos/sin tables in the Hugging Face rotate-half layout, computed in fp32."""
    inv_freq = 1.0 / cfg.rope_theta ** (
        torch.arange(0, cfg.head_dim, 2, device=positions.device).float() / cfg.head_dim
    )
    if cfg.rope_scaling != 1:
        inv_freq = llama3_scaled(inv_freq, cfg)
    angles = positions.float()[..., None] * inv_freq  # (..., hd/2) for positions (...,)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def llama3_scaled(inv_freq, cfg):
    """LLaMA-3.1's RoPE scaling: frequencies whose wavelength is long against the original context are divided
    by the factor, short ones kept, and those between blended linearly in original context / wavelength."""
    wavelength = 2 * math.pi / inv_freq
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    kept = ((cfg.rope_original_context / wavelength - low) / (high - low)).clamp(0, 1)  # 0: scaled, 1: kept
    return (1 - kept) * inv_freq / cfg.rope_scaling + kept * inv_freq


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        bias = cfg.arch == "gpt2"
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=bias or cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=bias)

    def forward(self, x, attn, rope, cache=None, positions=None):
        B, T, _ = x.shape
        # QKV projection, one matmul
        kv_size = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_head * self.head_dim, kv_size, kv_size], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        # RoPE (LLaMA)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # KV cache: write this pass's keys and values, then attend to the slots the mask covers (all, for "full")
        if cache is not None:
            k, v = cache.update(positions, k, v)  # (B, nkv, S, hd)
            seen = attn.shape[-1] if isinstance(attn, torch.Tensor) else None
            k, v = k[:, :, :seen], v[:, :, :seen]
        # attention (grouped-query heads share keys/values: enable_gqa)
        gqa = self.n_kv_head != self.n_head
        if isinstance(attn, torch.Tensor):  # a boolean allowed-mask: annealing on SDPA, a padded batch, a cache
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, enable_gqa=gqa)
        elif attn in ("full", "causal"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=attn == "causal", enable_gqa=gqa)
        else:  # a FlexAttention BlockMask: annealing on the GPU (imported here: the module is slow to import)
            from torch.nn.attention.flex_attention import BlockMask

            if not isinstance(attn, BlockMask):
                raise ValueError(f"attn must be 'causal', 'full', a boolean mask or a BlockMask, got {attn!r}")
            y = flex_attention(q, k, v, block_mask=attn, enable_gqa=gqa)
        # output projection
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)


class KVCache:
    """One layer's keys and values by position (gpt-fast's KVCache). update() writes at the given positions and
    returns every slot; the attention mask, not the cache, says which of them a query sees. So nothing is ever
    rolled back: a slot past what a query may see is hidden by its mask, and overwritten by a later write."""

    def __init__(self, batch_size, n_kv_head, max_len, head_dim, like):
        self.k = like.new_zeros(batch_size, n_kv_head, max_len, head_dim)
        self.v = torch.zeros_like(self.k)

    def update(self, positions, k, v):
        """k, v (B, nkv, T, hd) written at positions: (T,), the same for every row, or (B, T), each row's own."""
        B = k.shape[0]
        if positions.dim() == 1:
            self.k[:B, :, positions], self.v[:B, :, positions] = k, v
        else:
            rows = torch.arange(B, device=k.device)[:, None]
            self.k[rows, :, positions], self.v[rows, :, positions] = k.transpose(1, 2), v.transpose(1, 2)
        return self.k[:B], self.v[:B]


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

    def forward(self, x, attn, rope, cache=None, positions=None):
        x = x + self.attn(self.attn_norm(x), attn, rope, cache, positions)
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
        # GPT-2's initialisation, for --reinit (training from scratch); converted weights overwrite it
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.layers:  # GPT-2 scales the projections into the residual stream
            for proj in (block.attn.wo, block.mlp.down):
                nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, idx, attn="causal", where=None, cache=None, positions=None):
        """idx (B, L) token ids -> float logits (B, L, vocab).

        attn: "causal", "full", a boolean allowed-mask (True = may attend) or a FlexAttention BlockMask.
        where: optional boolean (B, L): logits only there, as (N, vocab) in row-major order (the head is a large
            share of the FLOPs, and training and decoding need logits only at masked targets).
        positions: (L,) or each row's own (B, L); default 0..L-1 ([x_t ; x_0] puts both halves at 0..L-1).
        cache: make_cache's: idx's keys and values are written at `positions`, and the queries attend to the
            cache's first S slots, S the width of the boolean mask attn (all of them for "full").
        """
        B, L = idx.shape
        if positions is None:
            if L > self.cfg.block_size:
                raise ValueError(f"sequence of {L} tokens exceeds the model's block_size {self.cfg.block_size}")
            positions = torch.arange(L, device=idx.device)
        # embeddings: tokens plus learned positions (GPT-2), or tokens and RoPE tables (LLaMA)
        x = self.tok_emb(idx)  # (B, L, C)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:
            rope = rope_cos_sin(positions, self.cfg)  # 2 × (L, hd), or (B, L, hd)
            if positions.dim() == 2:
                rope = tuple(t[:, None] for t in rope)  # (B, 1, L, hd): per row, shared by the heads
        # the blocks
        for i, layer in enumerate(self.layers):
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, attn, rope, use_reentrant=False)
            else:
                x = layer(x, attn, rope, cache[i] if cache is not None else None, positions)
        # logits, only where they are needed
        if where is not None:
            x = x[where]  # (N, C)
        return self.lm_head(self.norm(x)).float()  # (B, L, V) or (N, V)

    def make_cache(self, batch_size, max_len):
        """A KVCache per layer, of max_len slots (AR decoding; sample.py's caches)."""
        cfg, like = self.cfg, self.tok_emb.weight
        return [KVCache(batch_size, cfg.n_kv_head, max_len, cfg.head_dim, like) for _ in self.layers]


# ---------------------------------------------------------------------------------------------
# 2. The objective: noising, shift, 1/t-weighted loss (Algorithm 1); the AR loss beside it

EPS = 1e-3  # t ~ U(EPS, 1)


def shifted(values):
    """values (B, L) moved one position left, 0 at the end: with the shift, the logit at i predicts token i+1, so
    what position i answers for (its target, its weight, whether it is scored) is what sits at i+1."""
    return F.pad(values[:, 1:], (0, 1))


def predicting(targets, shift=True):
    """Where the logits that predict the target positions (B, L) sit (position 0 is never a target)."""
    return shifted(targets) if shift else targets


def diffusion_loss(
    model, x, maskable, t, noise, mask_id, attn="full", shift=True, per_row=False, block=0, complement=False, ar=False
):
    """Masked-diffusion loss sums for one batch -> (Σ CE/t, Σ CE, number of masked targets).

    x, maskable, noise: (B, L); t: (B,), or (B, blocks) with one level per block. Token (b, i) is masked where
    maskable and noise < its level (the uniforms passed in: every run reproducible). The paper's loss is
    Σ CE/t / n; Σ CE / n is the unweighted masked cross-entropy.
    block: block diffusion's block size, below L (0: the whole sequence, the paper): the model reads [x_t ; x_0]
        under block_attention(attn), and the loss is on the noisy half.
    ar: the clean half is also the AR model (self-speculative checkpoints, train.py --ar-weight): it attends
        token-causally, and two more sums follow, its next-token CE at the maskable tokens and their number.
    per_row: the three sums of each row, (B,) each (scoring many sequences in one batch).
    complement: each row twice, the second masked where the first is not, at level 1 - t (Fast-dLLM v2,
        LLaDA 2.0): every maskable token is a target once per pair. The rows come out as 2B.
    """
    B, L = x.shape
    level = t.repeat_interleave(block or L, dim=1)[:, :L] if t.dim() == 2 else t[:, None].expand(B, L)  # each token's t
    if complement:  # 1 - u < 1 - t exactly where u > t: the complement (u = t has probability 0)
        x, maskable = x.repeat(2, 1), maskable.repeat(2, 1)
        noise, level = torch.cat([noise, 1 - noise]), torch.cat([level, 1 - level])
    # noising: x -> x_t, each maskable token replaced by the mask token with probability t
    masked = maskable & (noise < level)  # (B, L)
    xt = x.masked_fill(masked, mask_id)
    # shift: the logit at i predicts token i+1, so select position i where token i+1 was masked
    where, targets, weights = (shifted(masked), shifted(x), shifted(1 / level)) if shift else (masked, x, 1 / level)
    positions = None
    if block:  # block diffusion: the clean copy beside the noisy one, for the later blocks to read
        xt, where, attn, positions = with_clean_copy(xt, x, where, attn, block, shift, ar)
        targets, weights = torch.cat([targets, targets], 1), torch.cat([weights, weights], 1)
    scored = where  # the diffusion loss's logits; with ar, the AR model's next-token logits too
    if ar:
        next_token = F.pad(shifted(maskable), (L, 0))  # (B, 2L): the clean half's logits before maskable tokens
        where = where | next_token
    # loss: cross-entropy at masked targets only, weighted by 1/t
    logits = model(xt, attn=attn, where=where, positions=positions)
    ce = F.cross_entropy(logits, targets[where], reduction="none")  # (N,)
    if ar:
        ar_ce, ce = ce[next_token[where]], ce[scored[where]]
    weights = weights[scored]
    if per_row:  # the targets come row by row, as boolean indexing lists them
        counts = scored.sum(1).tolist()
        return *(torch.stack([v.sum() for v in values.split(counts)]) for values in (weights * ce, ce)), masked.sum(1)
    sums = (weights * ce).sum(), ce.sum(), masked.sum()
    return (*sums, ar_ce.sum(), next_token.sum()) if ar else sums


def ar_loss(model, x, targets=None):
    """Next-token cross-entropy of x (B, L) -> (N,), one per target: each token after position 0 where the
    optional boolean (B, L) `targets` is True (default: all)."""
    where = torch.ones_like(x, dtype=torch.bool) if targets is None else predicting(targets)
    where[:, -1] = False  # the last logit predicts nothing
    return F.cross_entropy(model(x, attn="causal", where=where), shifted(x)[where], reduction="none")


def noise_levels(n, seed=None, offset=0.5, eps=EPS):
    """n noise levels, one in each of n equal strata of (eps, 1): eps + (1 - eps) (j + u_j) / n.

    u_j = offset (0.5: the strata's midpoints, a fixed grid), or with a seed one uniform draw per stratum
    (stratified Monte Carlo, for the ELBO E_t[(1/t) Σ CE]). The official choice score's t = j/T,
    j = 1..T, is offset 1 with eps 0."""
    u = [offset] * n if seed is None else torch.rand(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [eps + (1 - eps) * (j + u[j]) / n for j in range(n)]


# ---------------------------------------------------------------------------------------------
# 3. Attention annealing: from the causal mask to full attention


def anneal_ratio(step, anneal_steps):
    return 1.0 if anneal_steps <= 0 else min(1.0, (step + 1) / anneal_steps)


def attention_at(step, anneal_steps, seq_len, seed, device, flex=None, block=0, ar=False):
    """The attention of one training step: causal OR Bernoulli(ratio), the same draw for batch and heads.

    'full' once annealing is over (the fast SDPA path). During annealing a boolean (L, L) mask, or,
    given flex = support.flex.AnnealFlex(...), a FlexAttention BlockMask computed from the same hash on the GPU.
    block: block diffusion's block size, below seq_len (diffusion_loss's): the (2L, 2L) mask of `allowed`, annealed
    inside each block. 0: the whole sequence. ar: the clean half is the AR model (`allowed`).
    """
    ratio = anneal_ratio(step, anneal_steps)
    if ratio >= 1.0 and not block:
        return "full"
    step_seed, threshold = mix(seed, step) % 2**31, min(int(ratio * 2**32), 2**32)  # 2**32: every key
    if flex is not None:
        return flex(step_seed, threshold)
    q = torch.arange(2 * seq_len if block else seq_len, device=device)
    return allowed(q[:, None], q[None, :], seq_len, block or seq_len, step_seed, threshold, ar)


def allowed(q, k, seq_len, block, step_seed=0, threshold=2**32, ar=False):
    """May query position q attend to key position k? The one rule of every attention mask in training.

    Positions below seq_len are the noisy sequence x_t; with several blocks, position seq_len + i is the
    clean token x_0[i] beside it (BD3-LM's block_diff_mask, with the paper's annealing inside a block):
      a noisy query sees its block's noisy keys (the causal ones, and each later one with probability
      threshold / 2**32: the annealing), and the clean keys of the earlier blocks;
      a clean query sees the clean keys of its own and the earlier blocks (the AR model, a block at a time), or
      with ar those at or before it: the AR model itself (TiDAR; train.py --ar-weight).
    With one block there is no clean copy, and this is the paper's annealing mask.
    """
    noisy_q, noisy_k = q < seq_len, k < seq_len
    q_block, k_block = q % seq_len // block, k % seq_len // block
    annealed = (k <= q) | (anneal_hash(q, k, step_seed) < threshold)
    from_noisy = torch.where(noisy_k, (k_block == q_block) & annealed, k_block < q_block)
    return torch.where(noisy_q, from_noisy, ~noisy_k & ((k <= q) if ar else (k_block <= q_block)))


def with_clean_copy(xt, x, where, attn, block, shift=True, ar=False):
    """Block diffusion's forward pass over x_t (B, L): the input [x_t ; x_0], both halves at positions 0..L-1, under
    block_attention(attn, ar); the logits asked for at `where` (B, L) come from the noisy half, except that the
    logit before a block, which predicts its first token, comes from the clean half (it sees the earlier blocks
    only, as at decoding time) -> (input (B, 2L), where (B, 2L), attn, positions (2L,)). Logits come row by row,
    a row's noisy-half ones first."""
    L = x.shape[1]
    first = (torch.arange(1, L + 1, device=x.device) % block == 0) & shift  # the logit before a block starts
    positions = torch.arange(L, device=x.device).repeat(2)
    return (
        torch.cat([xt, x], 1),
        torch.cat([where & ~first, where & first], 1),
        block_attention(attn, L, block, x.device, ar),
        positions,
    )


def block_attention(attn, seq_len, block, device, ar=False):
    """diffusion_loss's attention over [x_t ; x_0], from the attention asked for over x_t: "full" (no annealing
    left) -> `allowed` without annealing; a padded batch's key mask (B, 1, 1, L) -> that, without the padding;
    an annealing mask of attention_at(..., block=block) -> itself."""
    if not isinstance(attn, (str, torch.Tensor)) or isinstance(attn, torch.Tensor) and attn.dim() == 2:
        return attn
    q = torch.arange(2 * seq_len, device=device)
    mask = allowed(q[:, None], q[None, :], seq_len, block, ar=ar)
    return mask if isinstance(attn, str) else mask & torch.cat([attn, attn], dim=-1)


def anneal_hash(q, k, seed):
    """A 32-bit integer hash of (seed, query, key): the annealing mask's Bernoulli draw, the same numbers whether
    the mask is materialised for SDPA or computed inside FlexAttention's mask_mod (no L×L tensor on the GPU)."""
    x = (q.long() * 65537 + k.long() + seed * 0x9E3779B1) % 2**32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) % 2**32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) % 2**32
    return x ^ (x >> 16)


def mix(*ints):
    """A 63-bit seed from integers (a splitmix-style hash): independent streams per (seed, step, example)."""
    h = 0x9E3779B97F4A7C15
    for i in ints:
        h = ((h ^ (i & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def flex_attention(q, k, v, block_mask, enable_gqa):
    """FlexAttention, compiled: inside a torch.compile'd model as part of its graph, else compiled once
    on its own (eager FlexAttention is a slow reference)."""
    from torch.nn.attention.flex_attention import flex_attention as eager

    run = eager if torch.compiler.is_compiling() or not q.is_cuda else compiled(eager)
    return run(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


compiled = functools.cache(torch.compile)  # each function compiled once


def compile_model(model, **options):
    """torch.compile with no graph break or recompile per step, by two process-wide settings: x[where] (a size that
    depends on the data) is traced into the graph; sizes equal by chance are not assumed equal (no "duck" shapes)."""
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    torch.fx.experimental._config.use_duck_shape = False
    return torch.compile(model, **options)
