"""Import GPT-2 / LLaMA / llama2.c / DiffuGPT / DiffuLLaMA weights into a checkpoint directory.

    python convert.py SRC OUT [--tokenizer PATH] [--mask-token new|ID] [--force] [--check]

SRC is a Hugging Face model directory (GPT-2, LLaMA including LLaMA-3, Qwen2 / Qwen2.5, and the released
DiffuGPT and DiffuLLaMA), a llama.cpp GGUF file (LLaMA architecture: SmolLM2, LLaMA; weights dequantized),
a llama2.c "version 0" .bin file, or a hub id such as gpt2 or diffusionfamily/diffugpt-s (fetched over
HTTPS into a cache; HF_ENDPOINT and HF_TOKEN honoured).

Tensors are streamed one at a time in their source dtype, so a 7B model is held once, not twice.
"""

import argparse
import datetime
import json
import re
import struct
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from checkpoint import check_shapes, load_checkpoint, load_torch_file, model_config, save_checkpoint
from data.download import WEIGHT_FILES, download_model
from model import ModelConfig
from support.cli import HelpFormatter, UserError
from support.files import sole_writer
from tokenizer import GPT2_FILES, GPT2_PATTERN, HF_TOKENIZER_FILES, SENTENCEPIECE_FILES, read_tokenizer_json

DIFFUGPT_S_MASK, DIFFUGPT_M_MASK = 10541, 50257  # the mask tokens of the released DiffuGPT-S and -M


# ---------------------------------------------------------------------------------------------
# Reading source tensors, one at a time


def iter_hf_tensors(src):
    """Yield (name, tensor) from a HF directory: safetensors (single or sharded) or pytorch_model*.bin."""
    from safetensors import SafetensorError, safe_open

    for index_name, single in WEIGHT_FILES:
        if (src / index_name).is_file():
            try:
                files = sorted(set(json.loads((src / index_name).read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise UserError(f"{src / index_name} is not a valid weight index: {e}") from None
            break
        if (src / single).is_file():
            files = [single]
            break
    else:
        raise UserError(f"{src} has no model.safetensors or pytorch_model.bin")
    for name in files:
        path = src / name
        if not path.is_file():
            raise UserError(f"weight shard {path} is missing")
        try:
            if name.endswith(".safetensors"):
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        yield key, f.get_tensor(key)
            else:  # never unpickle arbitrary objects; memory-mapped: not read all at once
                state = load_torch_file(path)
                while state:
                    key = next(iter(state))
                    yield key, state.pop(key)
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
            raise UserError(f"{path} is corrupted or truncated: {str(e).splitlines()[0]}") from None


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


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp's format), through the gguf package that llama.cpp publishes

GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")  # dequantized by gguf.quants
GGUF_NAMES = {  # llama.cpp's tensor names -> Hugging Face LLaMA's, which from_hf reads
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
LLAMA3_SPLIT = (  # LLaMA-3's pre-tokenizer rule (Qwen2's has \p{N} for \p{N}{1,3})
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
GGUF_PRE = {  # tokenizer.ggml.pre -> (split digits one by one, the split rule before byte-level BPE)
    "gpt-2": (False, GPT2_PATTERN),
    "smollm": (True, GPT2_PATTERN),  # llama.cpp: "\p{N}", then GPT-2's rule
    "llama-bpe": (False, LLAMA3_SPLIT),
    "qwen2": (False, LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")),
}


def read_gguf(path, scratch):
    """A llama.cpp GGUF file (LLaMA architecture) -> (ModelConfig, state, tokenizer files written to scratch).

    Weights are dequantized one tensor at a time to float32; llama.cpp stores q and k with RoPE's pairs
    interleaved (its convert script permutes them), which meta_to_hf_permute undoes. The tokenizer (byte-level
    BPE: tokens, merges, the pre-tokenizer's name, special tokens, BOS / EOS) becomes a tokenizer.json."""
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise UserError("reading a GGUF file needs the gguf package: pip install gguf") from None
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"{path} is not a readable GGUF file: {str(e).splitlines()[0]}") from None
    field = lambda key, default=None: reader.fields[key].contents() if key in reader.fields else default
    arch = field("general.architecture")
    if arch != "llama":
        raise UserError(f"{path}: GGUF architecture {arch!r} is not read (supported: llama)")
    if field("llama.rope.scaling.type", "none") != "none" or any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise UserError(f"{path}: RoPE scaling in a GGUF file is not read")
    for t in reader.tensors:
        if t.tensor_type.name not in GGUF_TYPES:
            raise UserError(
                f"{path}: tensor {t.name} is {t.tensor_type.name}, not read (read: {', '.join(GGUF_TYPES)})"
            )
    tokens = field("tokenizer.ggml.tokens") or []
    n_head, n_embd = field("llama.attention.head_count"), field("llama.embedding_length")
    n_kv_head = field("llama.attention.head_count_kv", n_head)
    cfg = model_config(
        dict(
            arch="llama",
            vocab_size=len(tokens) or field("llama.vocab_size"),
            block_size=field("llama.context_length"),
            n_layer=field("llama.block_count"),
            n_head=n_head,
            n_kv_head=n_kv_head,
            n_embd=n_embd,
            head_dim=field("llama.rope.dimension_count", n_embd // n_head),
            ffn_dim=field("llama.feed_forward_length"),
            norm_eps=field("llama.attention.layer_norm_rms_epsilon"),
            rope_theta=field("llama.rope.freq_base", 10000.0),
            tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        )
    )

    def tensors():
        for t in reader.tensors:
            module, _, param = t.name.rpartition(".")
            layer, _, name = module.partition(".")[2].partition(".") if module.startswith("blk.") else ("", "", module)
            if name not in GGUF_NAMES:
                raise UserError(f"{path}: unexpected tensor {t.name}")
            w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
            w = w.reshape(tuple(reversed(t.shape.tolist())))  # ggml lists dimensions innermost first
            if name in ("attn_q", "attn_k"):
                w = meta_to_hf_permute(w, n_head if name == "attn_q" else n_kv_head)
            yield (f"model.layers.{layer}.{GGUF_NAMES[name]}" if layer else GGUF_NAMES[name]) + f".{param}", w

    state = dict(from_hf("llama", tensors()))
    return cfg, state, gguf_tokenizer(path, field, scratch)


def gguf_tokenizer(path, field, scratch):
    """A GGUF file's byte-level BPE as a tokenizer.json (+ tokenizer_config.json for its EOS) in scratch;
    None when the file holds another kind (SentencePiece: pass --tokenizer)."""
    if field("tokenizer.ggml.model") != "gpt2":
        return None
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = field("tokenizer.ggml.pre", "gpt-2")
    if pre not in GGUF_PRE:
        raise UserError(f"{path}: pre-tokenizer {pre!r} is not read (read: {', '.join(GGUF_PRE)})")
    digits, split = GGUF_PRE[pre]
    tokens, kinds = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type", [])
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=pre == "llama-bpe")
    tok = Tokenizer(bpe)
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [
        pre_tokenizers.Split(Regex(split), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Sequence(steps), decoders.ByteLevel()
    bos, eos = field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")
    control = {i for i, k in enumerate(kinds) if k == gguf.TokenType.CONTROL} | {bos, eos} - {None}
    added = control | {i for i, k in enumerate(kinds) if k == gguf.TokenType.USER_DEFINED}
    tok.add_tokens([AddedToken(tokens[i], special=i in control, normalized=False) for i in sorted(added)])
    if field("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", special_tokens=[(tokens[bos], bos)]
        )
    tok.save(str(scratch / "tokenizer.json"))
    (scratch / "tokenizer_config.json").write_text(json.dumps({"eos_token": tokens[eos] if eos is not None else None}))
    return {"type": "tokenizer.json", "files": HF_TOKENIZER_FILES}, {"tokenizer.json": scratch / "tokenizer.json"}


# ---------------------------------------------------------------------------------------------
# Hugging Face's names for our config fields and tensors, both ways: convert.py reads HF checkpoints
# through these tables, hf_twin (tests, bench, --check) builds transformers' model from ours.

HF_CONFIG = [  # our ModelConfig field, GPT-2's config key, LLaMA's (None: not in that config)
    ("block_size", "n_positions", "max_position_embeddings"),
    ("n_layer", "n_layer", "num_hidden_layers"),
    ("n_head", "n_head", "num_attention_heads"),
    ("n_kv_head", None, "num_key_value_heads"),
    ("n_embd", "n_embd", "hidden_size"),
    ("head_dim", None, "head_dim"),
    ("ffn_dim", "n_inner", "intermediate_size"),
    ("norm_eps", "layer_norm_epsilon", "rms_norm_eps"),
    ("rope_theta", None, "rope_theta"),
    ("rope_scaling", None, "factor"),  # LLaMA-3.1's scaling: in rope_scaling (rope_parameters), lifted out
    ("rope_low_freq_factor", None, "low_freq_factor"),
    ("rope_high_freq_factor", None, "high_freq_factor"),
    ("rope_original_context", None, "original_max_position_embeddings"),
    ("tie_embeddings", None, "tie_word_embeddings"),
]
# HF's defaults for the keys a config may leave out (0: ModelConfig derives the value)
HF_DEFAULTS = {"n_inner": 0, "layer_norm_epsilon": 1e-5, "num_key_value_heads": 0, "head_dim": 0, "rms_norm_eps": 1e-6}
HF_DEFAULTS |= {"rope_theta": 10000.0, "tie_word_embeddings": False, "factor": 1.0, "low_freq_factor": 1.0}
HF_DEFAULTS |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def hf_config_keys(arch):
    """{our ModelConfig field: HF's config key} of an architecture."""
    column = 1 if arch == "gpt2" else 2
    return {row[0]: row[column] for row in HF_CONFIG if row[column]}


def config_from_hf(arch, hf, vocab_size, where):
    """A Hugging Face config.json (GPT-2 or LLaMA) -> ModelConfig; variants we do not implement are refused."""
    if arch == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"unsupported GPT-2 activation {hf['activation_function']!r}")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise UserError("unsupported GPT-2 attention (scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn)")
    else:
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "llama3"):
            raise UserError(f"unsupported RoPE scaling {rope!r} (supported: none, LLaMA-3's)")
        if hf.get("attention_bias") or hf.get("mlp_bias") or hf.get("hidden_act", "silu") != "silu":
            raise UserError("unsupported LLaMA variant (attention_bias, mlp_bias or an activation other than silu)")
        if hf.get("use_sliding_window"):  # Qwen2's option, off in its released models
            raise UserError(f"{where}: sliding-window attention is not supported (use_sliding_window)")
        hf = {**hf, "rope_theta": rope.get("rope_theta", hf.get("rope_theta"))}  # newer transformers nest it
        if kind == "llama3":
            for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                hf[key] = rope.get(key)
    fields = {}
    for ours, theirs in hf_config_keys(arch).items():
        value = hf.get(theirs)
        if value is None and theirs not in HF_DEFAULTS:
            raise UserError(f"{where} lacks {theirs!r}")
        fields[ours] = HF_DEFAULTS[theirs] if value is None else value
    return model_config(dict(arch=arch, vocab_size=vocab_size, qkv_bias=hf.get("model_type") == "qwen2", **fields))


HF_NAMES = {  # HF module name -> ours; inside layer i, "h.{i}." / "layers.{i}." is stripped first
    "gpt2": {
        "top": {"wte": "tok_emb", "embed_tokens": "tok_emb", "wpe": "pos_emb", "ln_f": "norm", "lm_head": "lm_head"},
        "layer": {
            "ln_1": "attn_norm",
            "ln_2": "mlp_norm",
            "attn.c_attn": "attn.wqkv",
            "attn.c_proj": "attn.wo",
            "mlp.c_fc": "mlp.up",
            "mlp.c_proj": "mlp.down",
        },
    },
    "llama": {  # several HF modules for one of ours: fused in this order (q, k, v; gate, up)
        "top": {"embed_tokens": "tok_emb", "norm": "norm", "lm_head": "lm_head"},
        "layer": {
            "input_layernorm": "attn_norm",
            "post_attention_layernorm": "mlp_norm",
            "self_attn.q_proj": "attn.wqkv",
            "self_attn.k_proj": "attn.wqkv",
            "self_attn.v_proj": "attn.wqkv",
            "self_attn.o_proj": "attn.wo",
            "mlp.gate_proj": "mlp.up",
            "mlp.up_proj": "mlp.up",
            "mlp.down_proj": "mlp.down",
        },
    },
}
HF_PREFIX = {"gpt2": "transformer.", "llama": "model."}
HF_SKIPPED = ("attn", "self_attn.rotary_emb")  # buffers of old transformers versions: causal masks, RoPE tables


def is_conv1d(arch, name, param):
    """GPT-2's Conv1D layers store their weight as [in, out]: transposed from nn.Linear's [out, in]."""
    return arch == "gpt2" and param == "weight" and name.startswith(("attn.", "mlp."))


def from_hf(arch, tensors):
    """Stream (HF name, tensor) -> (our name, tensor), holding only the parts of a fused matrix."""
    table, label = HF_NAMES[arch], {"gpt2": "GPT-2", "llama": "LLaMA"}[arch]
    pending = {}  # our fused name -> {HF name: tensor}
    for key, t in tensors:
        module, _, param = key.removeprefix(HF_PREFIX[arch]).removeprefix("denoise_model.").rpartition(".")
        layer = re.fullmatch(r"(?:h|layers)\.(\d+)\.(.+)", module)
        if layer and layer[2] in HF_SKIPPED:
            continue
        theirs, names = (layer[2], table["layer"]) if layer else (module, table["top"])
        if theirs not in names:
            raise UserError(f"unexpected {label} tensor {key}")
        ours = f"layers.{layer[1]}.{names[theirs]}" if layer else names[theirs]
        t = t.t() if layer and is_conv1d(arch, names[theirs], param) else t
        parts = [n for n, o in names.items() if o == names[theirs]] if layer else [theirs]
        if len(parts) == 1:
            yield f"{ours}.{param}", t
            continue
        group = pending.setdefault(f"{ours}.{param}", {})
        group[theirs] = t
        if len(group) == len(parts):
            del pending[f"{ours}.{param}"]
            yield f"{ours}.{param}", torch.cat([group[p] for p in parts])
    if pending:
        raise UserError(f"incomplete weights: {sorted(pending)[0]} lacks some of its parts")


def to_hf(model):
    """Our weights under HF's names (GPT2LMHeadModel / LlamaForCausalLM): the inverse of from_hf."""
    cfg, table = model.cfg, HF_NAMES[model.cfg.arch]
    fused_sizes = {
        "attn.wqkv": [cfg.n_head * cfg.head_dim] + [cfg.n_kv_head * cfg.head_dim] * 2,
        "mlp.up": [cfg.ffn_dim] * 2,
    }
    state = {}
    for key, t in model.state_dict().items():
        module, _, param = key.rpartition(".")
        layer = re.fullmatch(r"layers\.(\d+)\.(.+)", module)
        ours, names = (layer[2], table["layer"]) if layer else (module, table["top"])
        parts = [n for n, o in names.items() if o == ours]
        if not layer:
            parts = parts[:1]  # GPT-2's embedding has two HF names (wte, and DiffuGPT's embed_tokens): the first
        pieces = t.split(fused_sizes[ours]) if len(parts) > 1 else [t]
        for theirs, piece in zip(parts, pieces):
            if theirs == "lm_head":
                name = f"lm_head.{param}"
            elif layer:
                name = f"{HF_PREFIX[cfg.arch]}{'h' if cfg.arch == 'gpt2' else 'layers'}.{layer[1]}.{theirs}.{param}"
            else:
                name = f"{HF_PREFIX[cfg.arch]}{theirs}.{param}"
            state[name] = (piece.t() if is_conv1d(cfg.arch, ours, param) else piece).detach().clone()
    return state


def hf_twin(model):
    """transformers' GPT2LMHeadModel or LlamaForCausalLM with our model's weights (the official code's engine)."""
    import transformers

    cfg = model.cfg
    settings = {theirs: getattr(cfg, ours) for ours, theirs in hf_config_keys(cfg.arch).items()}
    if cfg.arch == "gpt2":
        hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, bos_token_id=0, eos_token_id=0, **settings)
        hf = transformers.GPT2LMHeadModel(hf_cfg)
    else:
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {k: settings.pop(k) for k in keys}
        rope = {"rope_type": "llama3", **scaling} if cfg.rope_scaling != 1 else {"rope_type": "default"}
        settings["rope_parameters"] = {**rope, "rope_theta": settings.pop("rope_theta")}
        family = (transformers.Qwen2Config, transformers.Qwen2ForCausalLM) if cfg.qkv_bias else None
        config, model_class = family or (transformers.LlamaConfig, transformers.LlamaForCausalLM)
        hf = model_class(config(vocab_size=cfg.vocab_size, **settings))
    loaded = hf.load_state_dict(to_hf(model), strict=False)  # a tied head is stored once
    missing = [k for k in loaded.missing_keys if not (k == "lm_head.weight" and cfg.tie_embeddings)]
    assert not missing and not loaded.unexpected_keys, (missing, loaded.unexpected_keys)
    hf.tie_weights()
    return hf.to(model.tok_emb.weight.device)


# ---------------------------------------------------------------------------------------------
# Tokenizer files


def find_tokenizer(path, gpt2=False):
    """-> (meta["tokenizer"], {name in checkpoint: source file}) or None if path holds none.

    A tokenizer.json holds the whole definition (Qwen2's and LLaMA-3's own pre-tokenizer rules), so it wins
    over the vocab.json + merges.txt beside it, which would be read with GPT-2's rules; except for GPT-2
    itself (gpt2=True), whose own files tiktoken reads. LLaMA-2's tokenizer.model wins over its tokenizer.json.
    """
    path = Path(path)
    if path.is_file():
        return {"type": "sentencepiece", "files": SENTENCEPIECE_FILES}, {"tokenizer.model": path}
    found = {}
    for enc, bpe in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):  # the same data, two names
        if (path / enc).is_file() and (path / bpe).is_file():
            found["gpt2-bpe"] = {"encoder.json": path / enc, "vocab.bpe": path / bpe}
            break
    for name, kind in (("tokenizer.model", "sentencepiece"), ("tokenizer.json", "tokenizer.json")):
        if (path / name).is_file():
            found[kind] = {name: path / name}
    order = ["gpt2-bpe"] * gpt2 + ["sentencepiece", "tokenizer.json", "gpt2-bpe"]
    kind = next((k for k in order if k in found), None)
    files = {"gpt2-bpe": GPT2_FILES, "sentencepiece": SENTENCEPIECE_FILES, "tokenizer.json": HF_TOKENIZER_FILES}
    return ({"type": kind, "files": files[kind]}, found[kind]) if kind else None


def read_vocabulary(spec, files):
    """(vocabulary size, bos, eos, id_of(token text) -> id or None), read from the tokenizer files themselves."""
    if spec["type"] == "gpt2-bpe":
        try:
            encoder = json.loads(Path(files["encoder.json"]).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {files['encoder.json']}: {e}") from None
        eot = encoder.get("<|endoftext|>")
        return len(encoder), eot, eot, encoder.get
    if spec["type"] == "tokenizer.json":
        return hf_vocabulary(Path(files["tokenizer.json"]))
    import sentencepiece

    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(files["tokenizer.model"]))
    except (OSError, RuntimeError) as e:
        raise UserError(
            f"cannot load SentencePiece model {files['tokenizer.model']}: {str(e).splitlines()[0]}"
        ) from None
    id_of = lambda piece: sp.piece_to_id(piece) if sp.id_to_piece(sp.piece_to_id(piece)) == piece else None
    return sp.get_piece_size(), sp.bos_id(), sp.eos_id(), id_of


def hf_vocabulary(file):
    """read_vocabulary of a tokenizer.json. BOS: the token its post-processor puts first, if any (LLaMA-3 does,
    Qwen2.5 and SmolLM2 do not), as transformers encodes. EOS: tokenizer_config.json's eos_token, else
    config.json's eos_token_id (the first, where it lists several)."""
    tok = read_tokenizer_json(file)
    plain, framed = tok.encode("a", add_special_tokens=False).ids, tok.encode("a", add_special_tokens=True).ids
    bos = framed[0] if len(framed) > len(plain) and framed[1:][: len(plain)] == plain else None
    configs = {}
    for name in ("tokenizer_config.json", "config.json"):
        try:
            configs[name] = json.loads((file.parent / name).read_text())
        except (OSError, ValueError):
            configs[name] = {}
    eos = configs["tokenizer_config.json"].get("eos_token")
    eos = tok.token_to_id(eos.get("content") if isinstance(eos, dict) else eos) if eos else None
    if eos is None:
        eos = configs["config.json"].get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(eos, int):
        raise UserError(f"{file}: no EOS token in tokenizer_config.json or config.json")
    return tok.get_vocab_size(with_added_tokens=True), bos, eos, tok.token_to_id


# ---------------------------------------------------------------------------------------------
# The conversion


@dataclass
class Source:
    """A model read from disk, in our names."""

    cfg: ModelConfig
    state: dict  # our name -> tensor
    kind: str  # "llama2c", "gguf", "hf-gpt2", "hf-llama" or "diffugpt"
    objective: str  # what it was trained for: "ar" or "diffusion"
    mask_id: int | None  # a released diffusion checkpoint's mask token
    tokenizer: tuple | None = None  # find_tokenizer's answer for a tokenizer inside the source file (GGUF)


def magic(path):
    """A file's first four bytes: what it is, whatever its name."""
    with open(path, "rb") as f:
        return f.read(4)


def load_source(src, scratch):
    """A llama2.c or GGUF file, or a Hugging Face directory -> Source (scratch: a folder for files it makes)."""
    if src.is_file() and magic(src) == b"GGUF":
        cfg, state, tokenizer = read_gguf(src, scratch)
        return Source(cfg, state, "gguf", "ar", None, tokenizer)
    if src.is_file():
        return Source(*read_llama2c(src), "llama2c", "ar", None)
    if not (src / "config.json").is_file():
        raise UserError(f"{src} has no config.json: not a Hugging Face model directory")
    try:
        hf = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise UserError(f"{src / 'config.json'} is not valid JSON: {e}") from None
    if not isinstance(hf, dict):
        raise UserError(f"{src / 'config.json'} must hold a JSON object, not {type(hf).__name__}")
    kind = hf.get("model_type")
    if kind not in ("gpt2", "llama", "qwen2"):
        raise UserError(f"unsupported model_type {kind!r} in {src / 'config.json'} (supported: gpt2, llama, qwen2)")
    kind = "llama" if kind == "qwen2" else kind  # Qwen2 is LLaMA with biases on q, k, v (cfg.qkv_bias)
    prefixes = set()  # DiffuGPT is told apart by its key names

    def noting_prefixes(raw):
        for key, t in raw:
            prefixes.add(key.split(".")[0])
            yield key, t

    state = dict(from_hf(kind, noting_prefixes(iter_hf_tensors(src))))
    if kind == "gpt2" and "tok_emb.weight" not in state and "lm_head.weight" in state:
        state["tok_emb.weight"] = state.pop("lm_head.weight")  # a tied pair saved under the head's name only
    if "tok_emb.weight" not in state:
        raise UserError(f"{src} has no token embedding")
    vocab_size = state["tok_emb.weight"].shape[0]
    cfg = config_from_hf(kind, hf, vocab_size, src / "config.json")
    head = state.get("lm_head.weight")
    if head is not None and cfg.tie_embeddings:
        if head.shape == state["tok_emb.weight"].shape and torch.equal(head, state["tok_emb.weight"]):
            del state["lm_head.weight"]  # a tied head saved twice
        else:
            cfg.tie_embeddings = False
    # DiffuGPT's own layout wraps GPT-2 in denoise_model.*: its mask is 10541 (S) or an added 50257 (M)
    # unless its tokenizer says otherwise (released_mask_id)
    if kind == "gpt2" and "denoise_model" in prefixes:
        mask_id = DIFFUGPT_M_MASK if vocab_size > DIFFUGPT_M_MASK else DIFFUGPT_S_MASK
        return Source(cfg, state, "diffugpt", "diffusion", mask_id)
    return Source(cfg, state, f"hf-{kind}", "ar", None)


def released_mask_id(src, id_of):
    """The mask token a released diffusion checkpoint's tokenizer files declare, as an id; None if none.

    The official code decodes with tokenizer.mask_token_id, so DiffuGPT and DiffuLLaMA (811, "ти")
    ship a "mask_token" in special_tokens_map.json or tokenizer_config.json; stock GPT-2 and LLaMA do not.
    """
    configs = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json", "added_tokens.json"):
        try:
            configs[name] = json.loads((src / name).read_text())
        except (OSError, ValueError):
            configs[name] = {}
    mask = configs["special_tokens_map.json"].get("mask_token") or configs["tokenizer_config.json"].get("mask_token")
    mask = mask.get("content") if isinstance(mask, dict) else mask
    if not isinstance(mask, str):
        return None
    added = dict(configs["added_tokens.json"])
    for i, token in configs["tokenizer_config.json"].get("added_tokens_decoder", {}).items():
        added[token.get("content")] = int(i)
    mask_id = added[mask] if mask in added else id_of(mask)
    if mask_id is None:
        raise UserError(f"{src}: its tokenizer's mask token {mask!r} is not in the vocabulary")
    return mask_id


def add_mask_token(cfg, state, init="mean"):
    """Append one token whose embedding (and untied head row) is the mean of the existing rows; init
    "noisy-mean": plus N(0, 1/d) noise, seeded (LLaMA-Factory's noisy mean, which the official code ran on)."""
    g = torch.Generator().manual_seed(0)
    for key in ("tok_emb.weight",) + (() if cfg.tie_embeddings else ("lm_head.weight",)):
        w = state[key]
        row = w.float().mean(0, keepdim=True)
        if init == "noisy-mean":
            row += torch.randn(row.shape, generator=g) / w.shape[1] ** 0.5
        state[key] = torch.cat([w, row.to(w.dtype)])
    cfg.vocab_size += 1
    return cfg.vocab_size - 1


def check_against_transformers(src, kind, out):
    """Run the source in transformers and the conversion in causal mode; print the max abs logit difference.

    A llama2.c file has no transformers counterpart: transformers' LLaMA gets the converted weights,
    which checks the architecture; the tests check the import itself by the real model's greedy story."""
    try:
        import transformers
    except ImportError:
        print("--check skipped: transformers is not installed", file=sys.stderr)
        return
    if kind == "llama2c":  # no HF directory to load: transformers' LLaMA with the converted weights
        ref = hf_twin(load_checkpoint(out)[0])
    elif kind == "diffugpt":  # DiffuGPT's keys wrap a GPT2Model: unwrap them into GPT2LMHeadModel
        from safetensors.torch import load_file

        hf_cfg = transformers.GPT2Config.from_pretrained(src)
        files = sorted(src.glob("*.safetensors"))
        state = {k.removeprefix("denoise_model."): v for f in files for k, v in load_file(f).items()}
        state["wte.weight"] = state.pop("embed_tokens.weight")
        hf_cfg.vocab_size = state["wte.weight"].shape[0]
        ref = transformers.GPT2LMHeadModel(hf_cfg)
        ref.transformer.load_state_dict(state, strict=False)
    else:
        ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ref.eval()
    ours, _ = load_checkpoint(out)
    vocab = ref.config.vocab_size
    idx = torch.randint(0, vocab, (2, min(64, ours.cfg.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ref(idx).logits.float() - ours(idx, attn="causal")[..., :vocab]).abs().max().item()
    print(f"check: max abs logit difference vs transformers = {diff:.3g}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    a("src", help="HF model directory, llama2.c .bin file, or hub id")
    a("out", help="checkpoint directory to write")
    a("--tokenizer", help="tokenizer file or directory (needed for llama2.c)")
    a("--mask-token", help="'new' appends one, an integer reuses that id (default: new, or the released id)")
    a(
        "--mask-init",
        choices=["mean", "noisy-mean"],
        default="mean",
        help="a new mask's embedding: mean, or + N(0, 1/d)",
    )
    a("--objective", choices=["ar", "diffusion"], help="override what the source was trained for")
    a("--force", action="store_true", help="overwrite OUT if it exists")
    a("--check", action="store_true", help="compare logits with transformers after converting")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and args.force and not (out / "config.json").is_file():
        raise UserError(f"{out} is not a checkpoint directory: refusing to replace it")
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists (pass --force to overwrite it)")
    if args.mask_token not in (None, "new") and not args.mask_token.isdigit():
        raise UserError(f"--mask-token must be 'new' or a token id, got {args.mask_token!r}")
    return args, out


def main(argv=None):
    args, out = parse_args(argv)
    with sole_writer(out), tempfile.TemporaryDirectory() as scratch:  # this process is OUT's one writer
        src = Path(args.src).expanduser()
        hub_id = None
        if not src.exists():
            parts = args.src.split("/")  # a hub id: "gpt2" or "org/name"
            if len(parts) > 2 or not all(parts) or args.src.startswith((".", "~")) or args.src.endswith(".bin"):
                raise UserError(f"source {args.src} does not exist")
            hub_id, src = args.src, download_model(args.src)
        source = load_source(src, Path(scratch))
        cfg, state = source.cfg, source.state

        if args.tokenizer and not Path(args.tokenizer).exists():
            raise UserError(f"tokenizer {args.tokenizer} does not exist")
        gpt2 = cfg.arch == "gpt2"
        tok = find_tokenizer(args.tokenizer or src, gpt2) if args.tokenizer or not src.is_file() else source.tokenizer
        if tok is None:
            need = "tokenizer.json, encoder.json + vocab.bpe, vocab.json + merges.txt or tokenizer.model"
            raise UserError(f"no tokenizer found in {args.tokenizer or src} (need {need}); pass --tokenizer")
        spec, files = tok
        n_tok, bos, eos, id_of = read_vocabulary(spec, files)
        declared = None if src.is_file() else released_mask_id(src, id_of)
        label = source.kind
        if declared is not None:  # a released diffusion checkpoint, whatever its directory is called
            source.objective, source.mask_id = "diffusion", declared
            label = {"hf-gpt2": "diffugpt", "hf-llama": "diffullama"}.get(source.kind, source.kind)
        if n_tok > cfg.vocab_size:
            raise UserError(
                f"the tokenizer has {n_tok} tokens but the model's vocabulary only {cfg.vocab_size}: wrong tokenizer?"
            )
        check_shapes(state, cfg, args.src)

        choice = args.mask_token or ("new" if source.mask_id is None else str(source.mask_id))
        if choice == "new":
            mask_id = add_mask_token(cfg, state, args.mask_init)
        else:
            mask_id = int(choice)
            if not 0 <= mask_id < cfg.vocab_size:
                raise UserError(f"--mask-token {mask_id} is outside the vocabulary (0..{cfg.vocab_size - 1})")
            if args.mask_token and mask_id in (bos, eos) and not args.force:  # your choice, not a release's
                raise UserError(f"--mask-token {mask_id} is the tokenizer's BOS or EOS (pass --force if you mean it)")

        meta = {
            "model": asdict(cfg),
            "objective": args.objective or source.objective,
            "mask_token_id": mask_id,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "tokenizer": spec,
            "source": {
                "from": hub_id or str(src.resolve()),
                "format": label,
                "mask_token": choice,
                "converted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            },
        }
        save_checkpoint(out, state, meta, tokenizer_from=files, overwrite=args.force)
        params = sum(t.numel() for t in state.values()) / 1e6
        print(
            f"wrote {out}: {label}, {cfg.arch}, {params:.2f}M params, vocab {cfg.vocab_size}, mask token {mask_id}, "
            f"objective {meta['objective']}",
            file=sys.stderr,
        )
        if args.check:
            check_against_transformers(src, source.kind, out)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
