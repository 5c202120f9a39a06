"""Hugging Face model directories, both ways: read_hf reads GPT-2, LLaMA (LLaMA-3 included), Qwen2 / Qwen2.5
and the released DiffuGPT and DiffuLLaMA into our names; hf_twin builds transformers' model from ours (tests,
lab/bench.py, convert.py --check). One pair of tables says how the names and the config keys correspond.

Tensors are streamed one at a time in their source dtype, so a 7B model is held once, not twice.
"""

import json
import re
import sys

import torch

from checkpoint import load_checkpoint, load_torch_file, model_config
from data.download import WEIGHT_FILES
from support.cli import UserError

# ---------------------------------------------------------------------------------------------
# Hugging Face's names for our config fields and tensors, both ways: read_hf reads HF checkpoints
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


# ---------------------------------------------------------------------------------------------
# Reading a directory, one tensor at a time


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


DIFFUGPT_S_MASK, DIFFUGPT_M_MASK = 10541, 50257  # the mask tokens of the released DiffuGPT-S and -M


def read_hf(src):
    """A Hugging Face model directory -> (ModelConfig, state, kind, objective, mask_id): kind "hf-gpt2", "hf-llama",
    or "diffugpt" for DiffuGPT's own layout, a diffusion model that comes with its mask token."""
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
        return cfg, state, "diffugpt", "diffusion", mask_id
    return cfg, state, f"hf-{kind}", "ar", None


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


# ---------------------------------------------------------------------------------------------
# Our model in transformers: the official code's engine, to compare against


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
