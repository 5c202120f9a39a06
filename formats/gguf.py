"""llama.cpp's GGUF files (LLaMA architecture: SmolLM2, LLaMA), read through the gguf package that llama.cpp
publishes: weights dequantized to float32, the byte-level BPE tokenizer rebuilt as a tokenizer.json.
"""

import json

import torch

from checkpoint import model_config
from formats.hf import from_hf
from formats.llama2c import meta_to_hf_permute
from support.cli import UserError
from tokenizer import GPT2_PATTERN, HF_TOKENIZER_FILES

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
