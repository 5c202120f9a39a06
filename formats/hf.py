"""Hugging Face model directories, both ways: read_hf reads GPT-2, LLaMA (LLaMA-3 included), Qwen2 / Qwen2.5
and the released DiffuGPT and DiffuLLaMA into our names; hf_twin builds transformers' model from ours (tests,
lab/bench.py, convert.py --check); write_hf exports a checkpoint as a directory transformers loads without remote
code (convert.py --to hf), which read_hf reads back whole. One pair of tables says how the names and the config
keys correspond.

Tensors are streamed one at a time in their source dtype, so a 7B model is held once, not twice.
"""

import json
import re
import shutil
import sys

import torch

from checkpoint import check_facts, load_checkpoint, load_torch_file, model_config, read_meta, read_weights
from data.download import WEIGHT_FILES
from support.cli import UserError
from support.files import atomic_dir
from tokenizer import read_tokenizer_json

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
DIFFUSION_FACTS = ("objective", "shift", "diffusion_block", "ar_weight")  # an export's "diffusion" object (write_hf)


def read_hf(src):
    """A Hugging Face model directory -> (ModelConfig, state, kind, objective, mask_id, facts): kind "hf-gpt2",
    "hf-llama", "diffugpt" for DiffuGPT's own layout, a diffusion model that comes with its mask token, or
    "hf-export" for write_hf's, whose config.json holds the checkpoint's facts (facts: the optional ones)."""
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
    if "diffusion" in hf:  # an export of ours (write_hf): the checkpoint's facts, as its config.json had them
        return cfg, state, "hf-export", *exported_facts(hf, cfg, src / "config.json")
    # DiffuGPT's own layout wraps GPT-2 in denoise_model.*: its mask is 10541 (S) or an added 50257 (M)
    # unless its tokenizer says otherwise (released_mask_id)
    if kind == "gpt2" and "denoise_model" in prefixes:
        mask_id = DIFFUGPT_M_MASK if vocab_size > DIFFUGPT_M_MASK else DIFFUGPT_S_MASK
        return cfg, state, "diffugpt", "diffusion", mask_id, {}
    return cfg, state, f"hf-{kind}", "ar", None, {}


def exported_facts(hf, cfg, where):
    """write_hf's config.json -> (objective, mask id, the optional facts), checked by the checkpoint's own rules."""
    facts = hf["diffusion"]
    if not isinstance(facts, dict) or "objective" not in facts or set(facts) - set(DIFFUSION_FACTS):
        raise UserError(f"{where}: diffusion must be an object of {', '.join(DIFFUSION_FACTS)} with an objective")
    facts = {**facts, "mask_token_id": hf.get("mask_token_id")}
    check_facts(facts, {"block_size": cfg.block_size, "vocab_size": cfg.vocab_size}, where)
    return facts.pop("objective"), facts.pop("mask_token_id"), facts


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


def to_hf(cfg, tensors):
    """Our (name, tensor) pairs under HF's names (GPT2LMHeadModel / LlamaForCausalLM): the inverse of from_hf.
    Yields views, not copies: a fused matrix is split, a GPT-2 Conv1D weight transposed."""
    table = HF_NAMES[cfg.arch]
    fused_sizes = {
        "attn.wqkv": [cfg.n_head * cfg.head_dim] + [cfg.n_kv_head * cfg.head_dim] * 2,
        "mlp.up": [cfg.ffn_dim] * 2,
    }
    for key, t in tensors:
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
            yield name, piece.t() if is_conv1d(cfg.arch, ours, param) else piece


def hf_config(cfg):
    """Our ModelConfig as transformers' config.json: GPT2LMHeadModel, LlamaForCausalLM, or Qwen2ForCausalLM for
    LLaMA with q, k, v biases. RoPE under the keys every transformers version and engine reads (rope_theta,
    rope_scaling), which transformers 5 reads into rope_parameters."""
    settings = {theirs: getattr(cfg, ours) for ours, theirs in hf_config_keys(cfg.arch).items()}
    model_type = "gpt2" if cfg.arch == "gpt2" else "qwen2" if cfg.qkv_bias else "llama"
    if cfg.arch == "gpt2":
        settings |= {"n_ctx": cfg.block_size}  # GPT-2's own name for n_positions, which llama.cpp's converter reads
        settings |= {"activation_function": "gelu_new", "tie_word_embeddings": cfg.tie_embeddings}
    else:
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {"rope_type": "llama3"} | {k: settings.pop(k) for k in keys}
        settings |= {"hidden_act": "silu", "rope_scaling": scaling if cfg.rope_scaling != 1 else None}
        settings |= {"use_sliding_window": False} if cfg.qkv_bias else {"attention_bias": False, "mlp_bias": False}
    architecture = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": cfg.vocab_size, **settings}


def hf_twin(model):
    """transformers' GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM with our model's weights (the official
    code's engine)."""
    import transformers

    cfg = model.cfg
    config = transformers.AutoConfig.for_model(**hf_config(cfg), bos_token_id=None, eos_token_id=None)
    hf = transformers.AutoModelForCausalLM.from_config(config)
    loaded = hf.load_state_dict(dict(to_hf(cfg, model.state_dict().items())), strict=False)  # a tied head: once
    missing = [k for k in loaded.missing_keys if not (k == "lm_head.weight" and cfg.tie_embeddings)]
    assert not missing and not loaded.unexpected_keys, (missing, loaded.unexpected_keys)
    hf.tie_weights()
    return hf.to(model.tok_emb.weight.device)


def check_against_transformers(reference, kind, ckpt):
    """Run `reference` (the Hugging Face side: a source, or an export) in transformers and our checkpoint `ckpt`
    causally; print the max abs logit difference.

    A llama2.c file has no transformers counterpart: transformers' LLaMA gets the converted weights,
    which checks the architecture; the tests check the import itself by the real model's greedy story."""
    try:
        import transformers
    except ImportError:
        print("--check skipped: transformers is not installed", file=sys.stderr)
        return
    if kind == "llama2c":  # no HF directory to load: transformers' LLaMA with the converted weights
        ref = hf_twin(load_checkpoint(ckpt)[0])
    elif kind == "diffugpt":  # DiffuGPT's keys wrap a GPT2Model: unwrap them into GPT2LMHeadModel
        from safetensors.torch import load_file

        hf_cfg = transformers.GPT2Config.from_pretrained(reference)
        files = sorted(reference.glob("*.safetensors"))
        state = {k.removeprefix("denoise_model."): v for f in files for k, v in load_file(f).items()}
        state["wte.weight"] = state.pop("embed_tokens.weight")
        hf_cfg.vocab_size = state["wte.weight"].shape[0]
        ref = transformers.GPT2LMHeadModel(hf_cfg)
        ref.transformer.load_state_dict(state, strict=False)
    else:
        ref = transformers.AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    ref.eval()
    ours, _ = load_checkpoint(ckpt)
    vocab = ref.config.vocab_size
    idx = torch.randint(0, vocab, (2, min(64, ours.cfg.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ref(idx).logits.float() - ours(idx, attn="causal")[..., :vocab]).abs().max().item()
    print(f"check: max abs logit difference vs transformers = {diff:.3g}")


# ---------------------------------------------------------------------------------------------
# Exporting a checkpoint: transformers' layout, which its AR mode serves in any engine that loads the family

NEW_MASK = "<|mask|>"  # the name of a mask token appended after the tokenizer's vocabulary
SHARD_SIZE = 5 * 10**9  # transformers' max_shard_size (5GB until version 5, 50GB since)


def write_hf(ckpt, out, shard_size=SHARD_SIZE, overwrite=False):
    """Our checkpoint directory -> a Hugging Face model directory (convert.py --to hf): transformers' config.json
    with the diffusion facts added (the "diffusion" object, "mask_token_id"), the weights under HF's names in
    safetensors (sharded past shard_size bytes, as transformers shards), and tokenizer files AutoTokenizer reads,
    the mask token named in them. Returns a summary line. With overwrite, only an earlier export is replaced."""
    meta = read_meta(ckpt)
    cfg = model_config(meta["model"])
    if overwrite and out.exists() and not is_export(out):
        raise UserError(f"{out} is not an export written by convert.py --to hf: refusing to replace it")
    if cfg.arch == "gpt2" and (cfg.n_kv_head != cfg.n_head or cfg.head_dim * cfg.n_head != cfg.n_embd):
        raise UserError(f"{ckpt}: GPT2LMHeadModel has neither grouped heads nor a head_dim of its own")
    with atomic_dir(out, overwrite=overwrite, last_file="config.json") as tmp:
        mask = write_tokenizer(ckpt, meta, tmp)  # first: a tokenizer it cannot write is refused before the weights
        state = read_weights(ckpt, cfg)  # in its own dtype: the export is the checkpoint, bit for bit
        n_files = write_weights(tmp, to_hf(cfg, state.items()), shard_size)
        config = hf_config(cfg) | {
            "dtype": str(state["tok_emb.weight"].dtype).removeprefix("torch."),  # transformers 5's key (torch_dtype)
            "bos_token_id": meta.get("bos_token_id"),
            "eos_token_id": meta["eos_token_id"],
            "mask_token_id": meta["mask_token_id"],
            "diffusion": {key: meta[key] for key in DIFFUSION_FACTS if key in meta},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return f"{config['architectures'][0]}, {n_files} weight file(s), mask token {mask!r} = {meta['mask_token_id']}"


def is_export(directory):
    """Whether a directory is write_hf's (what --force may replace): its config.json has the "diffusion" object."""
    try:
        return isinstance(json.loads((directory / "config.json").read_text()).get("diffusion"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def write_weights(directory, tensors, shard_size):
    """(HF name, tensor) pairs -> model.safetensors, or past shard_size bytes model-0000K-of-0000N.safetensors and
    model.safetensors.index.json (a tensor larger than shard_size gets a file of its own). Each file is written as it
    fills, so beyond the tensors given only one file's contiguous copies are held. -> the number of files."""
    from safetensors.torch import save_file

    shards, shard, size, total = [], {}, 0, 0
    for name, t in [*tensors, (None, None)]:  # None: the end
        nbytes = 0 if t is None else t.numel() * t.element_size()
        if shard and (t is None or size + nbytes > shard_size):
            shards.append(list(shard))
            save_file(shard, directory / f"shard-{len(shards)}", metadata={"format": "pt"})
            shard, size = {}, 0
        if t is not None:
            shard[name], size, total = t.contiguous(), size + nbytes, total + nbytes
    if len(shards) == 1:
        (directory / "shard-1").rename(directory / "model.safetensors")
        return 1
    weight_map = {}
    for k, names in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        (directory / f"shard-{k}").rename(directory / file)
        weight_map |= dict.fromkeys(names, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return len(shards)


def write_tokenizer(ckpt, meta, directory):
    """The checkpoint's tokenizer as AutoTokenizer reads it -> the mask token's name.

    GPT-2's files under HF's names (GPT2Tokenizer); a SentencePiece model with the tokenizer.json made from it
    (transformers needs protobuf to read a tokenizer.model); a tokenizer.json as it is. tokenizer_config.json names
    BOS, EOS and the mask token (a reused id by its token, a new one as NEW_MASK), and lists the added tokens as
    transformers saves them, for the classes that rebuild a tokenizer from its vocabulary (Qwen2's): the tokenizer's
    own, then placeholders for any ids between its last and a new mask token (added tokens are numbered in order)."""
    kind, mask_id = meta["tokenizer"]["type"], meta["mask_token_id"]
    bos, eos = meta.get("bos_token_id"), meta["eos_token_id"]
    adds_bos = bos is not None and bos != eos  # as our encode_document: GPT-2 puts none
    if kind == "gpt2-bpe":
        shutil.copyfile(ckpt / "encoder.json", directory / "vocab.json")
        shutil.copyfile(ckpt / "vocab.bpe", directory / "merges.txt")
        names = {i: token for token, i in json.loads((ckpt / "encoder.json").read_text()).items()}
        declared = [{"id": eos, "content": names[eos], "special": True}] if eos in names else []
    else:
        if kind == "sentencepiece":
            shutil.copyfile(ckpt / "tokenizer.model", directory / "tokenizer.model")
            tokenizer_json = sentencepiece_json(ckpt / "tokenizer.model", bos if adds_bos else None)
            (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
        else:  # read by the library that defines the format (a file it cannot read is refused in one line)
            tokenizer_json = json.loads(read_tokenizer_json(ckpt / "tokenizer.json").to_str())
            shutil.copyfile(ckpt / "tokenizer.json", directory / "tokenizer.json")
        vocab, declared = tokenizer_json["model"]["vocab"], tokenizer_json["added_tokens"]
        names = dict(enumerate(t for t, _ in vocab)) if isinstance(vocab, list) else {i: t for t, i in vocab.items()}
        names |= {t["id"]: t["content"] for t in declared}
    end = max(names) + 1
    if mask_id < end:
        mask, new = names[mask_id], {}
    elif NEW_MASK in names.values():
        raise UserError(f"the tokenizer has a token {NEW_MASK} of its own: the mask token {mask_id} cannot be named")
    else:
        mask, new = NEW_MASK, {i: f"<|unused_{i}|>" for i in range(end, mask_id)} | {mask_id: NEW_MASK}
    flags = {"lstrip": False, "rstrip": False, "single_word": False, "normalized": False, "special": True}
    added = {t["id"]: flags | {k: t[k] for k in ("content", *flags) if k in t} for t in declared}
    added |= {i: flags | {"content": token} for i, token in new.items()}
    unk = None if kind == "gpt2-bpe" else tokenizer_json["model"].get("unk_token")  # SentencePiece's <unk>
    special = {"bos_token": names.get(bos), "eos_token": names.get(eos), "unk_token": unk, "mask_token": mask}
    config = {
        "tokenizer_class": "GPT2Tokenizer" if kind == "gpt2-bpe" else "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": adds_bos,
        "add_eos_token": False,
        "model_max_length": meta["model"]["block_size"],
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(i): added[i] for i in sorted(added)},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {key: token for key, token in special.items() if token is not None}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
    return mask


def sentencepiece_json(file, bos):
    """A SentencePiece BPE model (LLaMA's, llama2.c's) as a Hugging Face tokenizer.json that encodes the same.

    Its merges are every split of a piece into two pieces, ranked by the merged piece's score, which is the order in
    which SentencePiece's BPE merges. Its normalizer is the model's: a "▁" before the text, spaces as "▁", and (where
    the model removes extra whitespace, as llama2.c's do) spaces trimmed at both ends and runs of them made one.
    bos: the token put first (None: nothing). Other models are refused: they would encode differently."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    special = [i for i in vocab.values() if sp.is_control(i) or sp.is_unknown(i)]
    merges, unmerged = [], 0
    for piece, i in vocab.items():
        if i in special or sp.is_byte(i) or len(piece) < 2:
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += [(-sp.get_score(i), i, vocab[a], vocab[b], [a, b]) for a, b in splits]
        unmerged += not splits
    probe = "ｆ① x"  # changed by any normalization other than identity, or lost without byte fallback
    if unmerged or sp.decode(sp.encode(probe)) != probe or not sp.id_to_piece(sp.encode("x")[0]).startswith("▁"):
        raise UserError(
            f"{file}: only a BPE SentencePiece model without normalization, with byte fallback and a ▁ put "
            "before the text (LLaMA's, llama2.c's) can be exported"
        )
    replace = lambda pattern, content: {"type": "Replace", "pattern": pattern, "content": content}
    normalizers = [replace({"Regex": r"\A +| +\z"}, ""), replace({"Regex": " {2,}"}, " ")]
    normalizers = normalizers if sp.encode("a  b") == sp.encode("a b") else []  # remove_extra_whitespaces
    normalizers += [{"type": "Prepend", "prepend": "▁"}, replace({"String": " "}, "▁")]
    first = [{"SpecialToken": {"id": sp.id_to_piece(bos), "type_id": 0}}] if bos is not None else []
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": sp.id_to_piece(i),
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in special
        ],
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": first + [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": first + [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {
                t["SpecialToken"]["id"]: {
                    "id": t["SpecialToken"]["id"],
                    "ids": [bos],
                    "tokens": [t["SpecialToken"]["id"]],
                }
                for t in first
            },
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                replace({"String": "▁"}, " "),
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": sp.id_to_piece(sp.unk_id()),
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [merge[-1] for merge in sorted(merges)],
        },
    }
