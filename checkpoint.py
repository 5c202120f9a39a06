"""Checkpoint directories: the format, the one hand-off between scripts.

A checkpoint is a directory:
    config.json        {"model": ModelConfig, "objective": "ar" | "diffusion", "mask_token_id", "bos_token_id",
                        "eos_token_id", "tokenizer": {"type", "files"}, "shift"?, "diffusion_block"?, "source"?,
                        "training"?}
    model.safetensors  the weights in our names (a tied head is stored once, as tok_emb.weight)
    tokenizer files    encoder.json + vocab.bpe (GPT-2 BPE), tokenizer.model (SentencePiece) or tokenizer.json
    train_state.pt, metrics.jsonl, loss.png    a train.py run's (read_train_state; read_run and check_resume: the
                       run's options, read back to resume it as the same run)
It is written atomically (support/files.py): a crash leaves the old directory (or none), never a half-written one.
Reading it checks what the scripts rely on, JSON's types included, with a one-line error for each problem.
"""

import argparse
import json
import pickle
import shutil
import warnings
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import torch

from model import ModelConfig, Transformer
from support.cli import UserError
from support.files import atomic_dir, restore_previous

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


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
    path = Path(path)
    if overwrite and path.exists() and not (path / CONFIG_FILE).is_file():  # --force replaces only what we wrote
        raise UserError(f"{path} is not a checkpoint directory: refusing to replace it")
    with atomic_dir(path, overwrite=overwrite, last_file=CONFIG_FILE) as tmp:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        for name in meta["tokenizer"]["files"]:
            src = tokenizer_from[name] if isinstance(tokenizer_from, dict) else Path(tokenizer_from) / name
            shutil.copyfile(src, tmp / name)
        for name, write in (extra or {}).items():
            write(tmp / name)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def model_config(d):
    """config.json's "model" -> ModelConfig. JSON has no types of ours: a "5" or a null must not reach the layers."""
    if not isinstance(d, dict):
        raise UserError(f"model config must be a JSON object, not {d!r}")
    unknown = set(d) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise UserError(f"unknown model config keys: {sorted(unknown)}")
    for f in fields(ModelConfig):
        value, want = d.get(f.name, f.default), type(f.default)
        allowed = (int, float) if want is float else want
        if isinstance(value, bool) != (want is bool) or not isinstance(value, allowed):
            raise UserError(f"model config: {f.name} is {value!r}, not {want.__name__}")
    if d.get("arch", "gpt2") not in ("gpt2", "llama"):
        raise UserError(f"unknown arch {d['arch']!r} (expected 'gpt2' or 'llama')")
    cfg = ModelConfig(**d)
    if cfg.n_head % cfg.n_kv_head:
        raise UserError(f"n_head={cfg.n_head} is not a multiple of n_kv_head={cfg.n_kv_head}")
    return cfg


is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # JSON's true is no token id
names = lambda v: (
    isinstance(v, list) and all(isinstance(f, str) and f == Path(f).name and f not in ("", "..") for f in v)
)

FACTS = {  # config.json's own keys: (rule, what it must be); "bos_token_id", "shift", "diffusion_block", "ar_weight"
    # may be absent
    "objective": (lambda v: v in ("ar", "diffusion"), "'ar' or 'diffusion'"),
    "mask_token_id": (is_int, "an int"),
    "eos_token_id": (lambda v: v is None or is_int(v), "an int or null"),
    "bos_token_id": (lambda v: v is None or is_int(v), "an int or null"),
    "tokenizer": (
        lambda v: isinstance(v, dict) and isinstance(v.get("type"), str) and names(v.get("files")),
        '{"type": a string, "files": [file names in the checkpoint]}',
    ),
    "shift": (lambda v: isinstance(v, bool), "true or false"),
    "diffusion_block": (lambda v: v is None or is_int(v) and v >= 0, "null or an int >= 0"),
    "training": (
        lambda v: isinstance(v, dict) and isinstance(v.get("args"), dict) and is_int(v.get("step")),
        '{"args": {...}, "step": an int}',
    ),
    "ar_weight": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e9, "a number >= 0"),
}


def read_meta(path):
    """Parse and check a checkpoint's config.json, with a one-line error for each problem."""
    path = Path(path)
    restore_previous(path, CONFIG_FILE)  # a crash may have left its previous version aside
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
    model_config(meta["model"])  # its types, before anything is built from it
    for key in ("arch", "vocab_size", "block_size", "n_layer", "n_head", "n_embd"):  # no silent defaults
        if key not in meta["model"]:
            raise UserError(f"{path / CONFIG_FILE}: the model config lacks {key!r}")
    check_facts(meta, meta["model"], path / CONFIG_FILE)
    for name in meta["tokenizer"].get("files", []):
        if not (path / name).is_file():
            raise UserError(f"checkpoint {path} lacks its tokenizer file {name}")
    return meta


def check_facts(facts, model, where):
    """config.json's facts by their rules (FACTS), and what the model (its config dict) must hold of them."""
    for key, (ok, want) in FACTS.items():
        if key in facts and not ok(facts[key]):
            raise UserError(f"{where}: {key} is {repr(facts[key])[:60]}, not {want}")
    if (block := facts.get("diffusion_block") or 0) >= model["block_size"]:  # train.py writes null for that
        raise UserError(f"{where}: diffusion_block {block} is not below block_size {model['block_size']}")
    for key in ("mask_token_id", "bos_token_id", "eos_token_id"):  # ids the embedding table must hold
        if facts.get(key) is not None and not 0 <= facts[key] < model["vocab_size"]:
            raise UserError(f"{where}: {key} {facts[key]} is outside the vocabulary")


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


def check_shapes(state, cfg, where):
    """Every tensor the config implies is present, with its shape, and nothing else."""
    with torch.device("meta"):  # the shapes, without allocating the model
        stored = Transformer(cfg).state_dict()
    expected = {k: v.shape for k, v in stored.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    for key in sorted(expected.keys() | state.keys()):
        if key not in state:
            raise UserError(f"{where}: tensor {key} is missing")
        if key not in expected:
            raise UserError(f"{where}: unexpected tensor {key}")
        if state[key].shape != expected[key]:
            shapes = f"{tuple(state[key].shape)}, the config implies {tuple(expected[key])}"
            raise UserError(f"{where}: tensor {key} has shape {shapes}")


def load_checkpoint(path, device="cpu", dtype=torch.float32):
    """Load a checkpoint directory -> (model in eval mode, meta = parsed config.json).

    The weights go straight to `device` in `dtype`, one tensor at a time: a 7B model on a GPU never
    has an fp32 copy in CPU memory."""
    meta = read_meta(path)
    cfg = model_config(meta["model"])
    state, file = read_weights(path, cfg, device), Path(path) / WEIGHTS_FILE
    finite = torch.stack([v.isfinite().all() for v in state.values()]).tolist()  # one device sync
    if not all(finite):
        bad = [k for k, ok in zip(state, finite) if not ok]
        raise UserError(f"{file}: non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(state, strict=False, assign=True)  # the names were checked above
    if cfg.tie_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.lm_head.weight = model.tok_emb.weight
    return model.to(device=device, dtype=dtype).eval(), meta


def read_weights(path, cfg, device="cpu"):
    """A checkpoint's tensors in their own dtype, on `device`, their names and shapes checked against cfg."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise UserError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        state = load_file(file, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is corrupted or truncated: {e}") from None
    check_shapes(state, cfg, file)
    return state


# train.py: the options a resumed run may change (where and how it runs, not what it computes), and those not
# read back from the run
RESUME_MAY_CHANGE = {"data_dir", "eval_interval", "device", "dtype", "compile", "fsdp", "activation_checkpointing"}
NOT_READ_BACK = {"config", "init_from", "out_dir", "extend_schedule"}


def read_run(out_dir):
    """-> (the options, the step) of the train.py run in out_dir, from its config.json."""
    training = read_meta(out_dir).get("training")
    if not isinstance(training, dict) or not isinstance(training.get("args"), dict):
        raise UserError(f"{out_dir} is not a train.py output: its config.json records no training run")
    return training["args"], training["step"]


def read_train_state(run_dir):
    """-> {"step", "tokens", "optimizer", "metrics"} of the run in run_dir, checked before any work (the
    optimizer state is memory-mapped: reading it here costs nothing until it is used)."""
    file = run_dir / "train_state.pt"
    if not file.is_file():
        raise UserError(f"{run_dir} has no train_state.pt: not a train.py output to resume")
    state = load_torch_file(file)
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        state["metrics"] = [json.loads(line) for line in lines if line]
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {run_dir / 'metrics.jsonl'}: {e}") from None
    return state


def check_resume(args, saved, done, given, lr_at):
    """A resumed run is the same run: an option (given) that contradicts the saved ones is refused; --max-iters may
    grow, and a schedule it changes (lr_at(step, args): train.py's) must be accepted with --extend-schedule."""
    for name, value in given.items():
        old = saved.get(name)
        if name in saved and name not in RESUME_MAY_CHANGE | {"max_iters"} and str(value) != str(old):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {value} contradicts the run in {args.out_dir}, which used {flag} {old}")
    if args.max_iters < done:
        raise UserError(f"--max-iters {args.max_iters} is below the {done} steps {args.out_dir} has done already")
    if args.max_iters == done:
        raise UserError(f"{args.out_dir} has done its {done} steps; pass a larger --max-iters to train further")
    before = argparse.Namespace(**{**vars(args), "max_iters": saved["max_iters"]})
    if lr_at(done, before) != lr_at(done, args) and not args.extend_schedule:
        raise UserError(
            f"--max-iters {saved['max_iters']} -> {args.max_iters} changes the cosine schedule (lr at step {done}: "
            f"{lr_at(done, before):.3g} -> {lr_at(done, args):.3g}); pass --extend-schedule to accept that"
        )
