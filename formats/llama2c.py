"""llama2.c's legacy "version 0" export (what its run.c reads): a header of seven int32s, then every
weight as float32 in a fixed order. Its q and k rows are in Meta's RoPE layout, which meta_to_hf_permute undoes.
"""

import struct

import torch

from checkpoint import model_config
from support.cli import UserError


def meta_to_hf_permute(w, n_heads):
    """Meta's RoPE rotates interleaved pairs (0,1),(2,3)...; HF rotates halves. Permute q/k rows."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def read_llama2c(path):
    """A llama2.c legacy "version 0" export -> (ModelConfig, our state dict)."""
    data = path.read_bytes()
    if len(data) < 28:
        raise UserError(f"{path} is too short to be a llama2.c checkpoint")
    if data[:4] == b"ak42":
        raise UserError(f"{path} is a llama2.c version >= 1 export; only the legacy version 0 format is supported")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", data[:28])
    if min(dim, hidden, n_layers, n_heads, n_kv, seq_len) <= 0 or dim % n_heads:
        raise UserError(f"{path} does not have a valid llama2.c header")
    shared = vocab > 0
    vocab, hd, kv_dim = abs(vocab), dim // n_heads, n_kv * (dim // n_heads)
    layer = {"rms_att": (dim,), "wq": (dim, dim), "wk": (kv_dim, dim), "wv": (kv_dim, dim), "wo": (dim, dim)}
    layer |= {"rms_ffn": (dim,), "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim)}
    shapes = {"tok_emb": (vocab, dim), **{k: (n_layers, *shape) for k, shape in layer.items()}, "rms_final": (dim,)}
    shapes |= {"freq_real": (seq_len, hd // 2), "freq_imag": (seq_len, hd // 2)}  # unused RoPE tables
    shapes |= {} if shared else {"wcls": (vocab, dim)}
    numel = sum(torch.Size(s).numel() for s in shapes.values())
    if len(data) != 28 + 4 * numel:
        raise UserError(f"{path} has {len(data)} bytes but its header implies {28 + 4 * numel}: truncated or corrupted")
    flat = torch.frombuffer(bytearray(data[28:]), dtype=torch.float32)
    w, offset = {}, 0
    for name, shape in shapes.items():
        n = torch.Size(shape).numel()
        w[name] = flat[offset : offset + n].view(shape)
        offset += n
    fields = dict(arch="llama", vocab_size=vocab, block_size=seq_len, n_layer=n_layers, n_head=n_heads, n_kv_head=n_kv)
    fields |= dict(n_embd=dim, ffn_dim=hidden, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=shared)
    cfg = model_config(fields)
    state = {"tok_emb.weight": w["tok_emb"], "norm.weight": w["rms_final"]}
    if not shared:
        state["lm_head.weight"] = w["wcls"]
    for i in range(n_layers):
        q, k = meta_to_hf_permute(w["wq"][i], n_heads), meta_to_hf_permute(w["wk"][i], n_kv)
        state[f"layers.{i}.attn_norm.weight"] = w["rms_att"][i]
        state[f"layers.{i}.attn.wqkv.weight"] = torch.cat([q, k, w["wv"][i]])
        state[f"layers.{i}.attn.wo.weight"] = w["wo"][i]
        state[f"layers.{i}.mlp_norm.weight"] = w["rms_ffn"][i]
        state[f"layers.{i}.mlp.up.weight"] = torch.cat([w["w1"][i], w["w3"][i]])
        state[f"layers.{i}.mlp.down.weight"] = w["w2"][i]
    return cfg, state
