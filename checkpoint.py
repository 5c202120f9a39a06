"""Checkpoint directories, and Hugging Face's names for the same tensors.

A checkpoint is a directory, the one hand-off between scripts:
    config.json        {"model": ModelConfig, "objective": "ar" | "diffusion", "mask_token_id", "bos_token_id",
                        "eos_token_id", "tokenizer": {"type", "files"}, "shift"?, "source"?, "training"?}
    model.safetensors  the weights in our names (a tied head is stored once, as tok_emb.weight)
    tokenizer files    encoder.json + vocab.bpe (GPT-2 BPE) or tokenizer.model (SentencePiece)
It is written atomically: a crash leaves the old directory (or none), never a half-written one.
"""

import errno
import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from model import ModelConfig, Transformer, UserError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@contextmanager
def atomic_dir(path, overwrite=False):
    """Yield a temporary directory that becomes `path` only once the block succeeds.

    Beside `path` live, for a moment, .NAME.tmp-PID (being written), .NAME.old-PID (the previous
    version, between the two renames) and .NAME.trash-PID (being deleted). A crash can leave any of
    them; those of dead processes are cleared here, and read_meta restores an .old-* if need be.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists (pass --force to overwrite it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_previous(path)
    for leftover in leftovers(path, "tmp", "trash", *(["old"] if path.exists() else [])):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp, old, trash = (path.parent / f".{path.name}.{kind}-{os.getpid()}" for kind in ("tmp", "old", "trash"))
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise UserError(f"cannot write {path}: {str(e).splitlines()[0]}; nothing was changed") from None
        raise
    if path.exists():
        path.rename(old)  # an .old-* is always whole: it is renamed, never deleted in place
        tmp.rename(path)
        old.rename(trash)
        shutil.rmtree(trash)
    else:
        tmp.rename(path)


def is_disk_full(e):
    """A full disk or quota, or a file-size limit: as an OSError, or inside safetensors' / torch's own errors."""
    codes = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    if isinstance(e, OSError):
        return e.errno in codes
    return any(f"(os error {code})" in str(e) for code in codes) or "file write failed" in str(e)


def leftovers(path, *kinds):
    """The .NAME.KIND-PID directories beside path whose process is gone."""
    found = []
    for kind in kinds:
        for d in path.parent.glob(f".{path.name}.{kind}-*"):
            pid = d.name.rsplit("-", 1)[1]
            if pid.isdigit() and not is_alive(int(pid)):
                found.append(d)
    return found


def is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        pass
    return True


def restore_previous(path):
    """After a crash between atomic_dir's two renames, path is gone and its previous version is an .old-*."""
    if path.exists():
        return
    whole = [d for d in leftovers(path, "old") if (d / CONFIG_FILE).is_file()]
    if whole:  # the newest, if crashes left several
        max(whole, key=lambda d: (d / CONFIG_FILE).stat().st_mtime_ns).rename(path)


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
    restore_previous(path)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a directory")
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} has no {CONFIG_FILE}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path / CONFIG_FILE} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path / CONFIG_FILE} must hold a JSON object, not {type(meta).__name__}")
    for key in ("model", "objective", "mask_token_id", "eos_token_id", "tokenizer"):
        if key not in meta:
            raise UserError(f"{path / CONFIG_FILE} lacks {key!r}: not a checkpoint written by convert.py or train.py")
    ModelConfig.from_dict(meta["model"])  # its types, before anything is built from it
    for key in ("arch", "vocab_size", "block_size", "n_layer", "n_head", "n_embd"):  # no silent defaults
        if key not in meta["model"]:
            raise UserError(f"{path / CONFIG_FILE}: the model config lacks {key!r}")
    if not 0 <= meta["mask_token_id"] < meta["model"]["vocab_size"]:
        raise UserError(f"{path / CONFIG_FILE}: mask_token_id {meta['mask_token_id']} is outside the vocabulary")
    for name in meta["tokenizer"].get("files", []):
        if not (path / name).is_file():
            raise UserError(f"checkpoint {path} lacks its tokenizer file {name}")
    return meta


def pick_device(name):
    """--device: 'auto' is CUDA when present, else the CPU; a device this machine lacks is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pick_dtype(name, device):
    """--dtype: 'auto' is bf16 on a GPU that has it, fp32 elsewhere (CPUs without bf16 units are ~100x slower)."""
    if name != "auto":
        return DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def load_torch_file(file):
    """A torch.save file: tensors and plain containers only (weights_only), memory-mapped when it can be."""
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would precede our one-line refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as e:  # an object that would run code when unpickled
        raise UserError(f"{file} holds objects other than tensors; refused ({str(e).splitlines()[0]})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise UserError(f"{file} is corrupted or truncated: {str(e).splitlines()[0]}") from None


def expected_shapes(cfg):
    """Name -> shape of every stored tensor for cfg, without allocating the model."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return {k: v.shape for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}


def check_shapes(state, cfg, where):
    """Every tensor the config implies is present, with its shape, and nothing else."""
    expected = expected_shapes(cfg)
    for key in sorted(expected.keys() | state.keys()):
        if key not in state:
            raise UserError(f"{where}: tensor {key} is missing")
        if key not in expected:
            raise UserError(f"{where}: unexpected tensor {key}")
        if state[key].shape != expected[key]:
            raise UserError(
                f"{where}: tensor {key} has shape {tuple(state[key].shape)}, the config implies {tuple(expected[key])}"
            )


def load_checkpoint(path, device="cpu", dtype=torch.float32):
    """Load a checkpoint directory -> (model in eval mode, meta = parsed config.json).

    The weights go straight to `device` in `dtype`, one tensor at a time: a 7B model on a GPU never
    has an fp32 copy in CPU memory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(path)
    cfg = ModelConfig.from_dict(meta["model"])
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise UserError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        state = load_file(file, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is corrupted or truncated: {e}") from None
    check_shapes(state, cfg, file)
    state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(state, strict=False, assign=True)  # the names were checked above
    if cfg.tie_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.lm_head.weight = model.tok_emb.weight
    return model.to(device=device, dtype=dtype).eval(), meta


# ---------------------------------------------------------------------------------------------
# Hugging Face names: convert.py reads HF checkpoints through this table, bench.py builds its
# transformers twin through its inverse.

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
    if cfg.arch == "gpt2":
        hf = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=cfg.vocab_size,
                n_positions=cfg.block_size,
                n_embd=cfg.n_embd,
                n_layer=cfg.n_layer,
                n_head=cfg.n_head,
                layer_norm_epsilon=cfg.norm_eps,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    else:
        hf = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=cfg.vocab_size,
                hidden_size=cfg.n_embd,
                intermediate_size=cfg.ffn_dim,
                num_hidden_layers=cfg.n_layer,
                num_attention_heads=cfg.n_head,
                num_key_value_heads=cfg.n_kv_head,
                head_dim=cfg.head_dim,
                max_position_embeddings=cfg.block_size,
                rms_norm_eps=cfg.norm_eps,
                rope_theta=cfg.rope_theta,
                tie_word_embeddings=cfg.tie_embeddings,
            )
        )
    loaded = hf.load_state_dict(to_hf(model), strict=False)  # a tied head is stored once
    missing = [k for k in loaded.missing_keys if not (k == "lm_head.weight" and cfg.tie_embeddings)]
    assert not missing and not loaded.unexpected_keys, (missing, loaded.unexpected_keys)
    hf.tie_weights()
    return hf.to(model.tok_emb.weight.device)
