"""Checkpoint directories, and what every script's command line shares.

A checkpoint is a directory, the one hand-off between scripts:
    config.json        {"model": ModelConfig, "objective": "ar" | "diffusion", "mask_token_id", "bos_token_id",
                        "eos_token_id", "tokenizer": {"type", "files"}, "shift"?, "source"?, "training"?}
    model.safetensors  the weights in our names (a tied head is stored once, as tok_emb.weight)
    tokenizer files    encoder.json + vocab.bpe (GPT-2 BPE) or tokenizer.model (SentencePiece)
It is written atomically: a crash leaves the old directory (or none), never a half-written one.

The scripts share --help's format, --device / --dtype (pick_device, pick_dtype), one-line value checks
for argparse (checked, COUNT, ...), progress on long work (progress_bar) and the peak FLOP/s that MFU is
measured against.
"""

import argparse
import errno
import importlib.util
import json
import os
import pickle
import shutil
import signal
import sys
import time
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm import tqdm

from model import ModelConfig, Transformer, UserError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@contextmanager
def atomic_dir(path, overwrite=False):
    """Yield a temporary directory that becomes `path` only once the block succeeds.

    Beside `path` live, for a moment, .NAME.tmp-PID (being written), .NAME.old-PID (the previous
    version, between the two renames of replace_dir) and .NAME.trash-PID (being deleted). A crash can
    leave any of them: clear_leftovers clears those of dead processes, read_meta restores an .old-*.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists (pass --force to overwrite it)")
    if path.exists() and not (path / CONFIG_FILE).is_file():  # --force replaces only what this project wrote
        raise UserError(f"{path} is not a checkpoint directory: refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(path)
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise UserError(f"cannot write {path}: {str(e).splitlines()[0]}; nothing was changed") from None
        raise
    replace_dir(tmp, path)


@contextmanager
def sole_writer(path, holder=True):
    """This process is the one writer of output `path` while the block runs: a lock (.NAME.lock beside it) that
    a second writer finds taken at once, naming the holder's PID. The OS releases it when the process dies,
    so a lock left by a killed run never blocks the next. holder=False: take none (torchrun's other ranks).
    Yields the lock file (None without one)."""
    import fcntl

    if not holder:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"{path} is being written by another process (PID {f.read().strip() or '?'})") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield f  # forked workers must close it (data/prepare.py): the lock lives as long as any copy
        finally:
            lock.unlink(missing_ok=True)  # before the lock is released: a newcomer makes a file of its own


def replace_dir(new, path):
    """Rename directory `new` to `path`. A previous `path` is renamed aside first and deleted last: it is
    never deleted in place, so a crash leaves it whole (as .NAME.old-PID, which restore_previous puts back)."""
    if not path.exists():
        new.rename(path)
        return
    old, trash = (path.parent / f".{path.name}.{kind}-{os.getpid()}" for kind in ("old", "trash"))
    path.rename(old)
    new.rename(path)
    old.rename(trash)
    shutil.rmtree(trash)


def atomic_write(path, data):
    """Write a file whole or not at all: a temporary beside it, synced to disk, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def plot_curves(curves, path, ylabel, title=None):
    """Curves {label: (training tokens, values)} as a PNG, as train.py's loss.png (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (tokens, values) in curves.items():
        ax.plot(tokens, values, label=label)
    ax.set(xlabel="training tokens", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def die_with_parent(parent):
    """Have Linux send this process SIGTERM when `parent` dies (elsewhere: nothing): a child of a killed
    lab/miniature.py, or a worker of a killed data/prepare.py, stops instead of running on unowned."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)


def restore_previous(path):
    """After a crash between replace_dir's two renames, path is gone and its previous version is an .old-*."""
    if path.exists():
        return
    whole = [d for d in leftovers(path, "old") if (d / CONFIG_FILE).is_file()]
    if whole:  # the newest, if crashes left several
        max(whole, key=lambda d: (d / CONFIG_FILE).stat().st_mtime_ns).rename(path)


def clear_leftovers(path):
    """Put back a previous version of path that a crash left aside, then delete what dead processes left beside it."""
    restore_previous(path)
    for leftover in leftovers(path, "tmp", "old", "trash"):
        shutil.rmtree(leftover, ignore_errors=True)


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
FACTS = {  # config.json's own keys: (rule, what it must be); "shift" and "diffusion_block" may be absent
    "objective": (lambda v: v in ("ar", "diffusion"), "'ar' or 'diffusion'"),
    "mask_token_id": (is_int, "an int"),
    "eos_token_id": (lambda v: v is None or is_int(v), "an int or null"),
    "shift": (lambda v: isinstance(v, bool), "true or false"),
    "diffusion_block": (lambda v: v is None or is_int(v) and v >= 0, "null or an int >= 0"),
}


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
    model_config(meta["model"])  # its types, before anything is built from it
    for key in ("arch", "vocab_size", "block_size", "n_layer", "n_head", "n_embd"):  # no silent defaults
        if key not in meta["model"]:
            raise UserError(f"{path / CONFIG_FILE}: the model config lacks {key!r}")
    for key, (ok, want) in FACTS.items():
        if key in meta and not ok(meta[key]):
            raise UserError(f"{path / CONFIG_FILE}: {key} is {meta[key]!r}, not {want}")
    if not 0 <= meta["mask_token_id"] < meta["model"]["vocab_size"]:
        raise UserError(f"{path / CONFIG_FILE}: mask_token_id {meta['mask_token_id']} is outside the vocabulary")
    for name in meta["tokenizer"].get("files", []):
        if not (path / name).is_file():
            raise UserError(f"checkpoint {path} lacks its tokenizer file {name}")
    return meta


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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(path)
    cfg = model_config(meta["model"])
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise UserError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        state = load_file(file, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is corrupted or truncated: {e}") from None
    check_shapes(state, cfg, file)
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


# ---------------------------------------------------------------------------------------------
# What every script's command line shares: --help, --device / --dtype, value checks


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The scripts' --help: each option's default, unless it is empty (None, False, "", [])."""

    def _get_help_string(self, action):
        empty = action.default is None or action.default is False or action.default in ("", [])
        said = "default" in (action.help or "")
        return action.help if empty or said else super()._get_help_string(action)


def checked(kind, ok, what):
    """An argparse type= that refuses a bad value in one line: checked(float, lambda v: v > 0, "positive")."""

    def parse(text):
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


COUNT = checked(int, lambda v: v >= 1, "at least 1")
NON_NEGATIVE = checked(int, lambda v: v >= 0, "at least 0")
POSITIVE = checked(float, lambda v: v > 0, "positive")


def output_file(text):
    """An argparse type for --output / --json: refused before any work unless it can be written."""
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: not a file in a writable folder")
    return path


PROBABILITY = checked(float, lambda v: 0 < v <= 1, "in (0, 1]")


def progress_bar(*args, **kwargs):
    """tqdm on standard error: a live bar on a terminal; off one (a log file, a pipe), a plain line at most
    once a minute, so that a long run in the background still says how far it is."""
    if sys.stderr.isatty():
        return tqdm(*args, file=sys.stderr, dynamic_ncols=True, **kwargs)
    return LogLines(*args, file=sys.stderr, **kwargs)


class LogLines(tqdm):
    """tqdm's status line, written whole when it changes, at most once a minute (tqdm itself would redraw one
    line with carriage returns, or print nothing off a terminal)."""

    def __init__(self, *args, **kwargs):
        self.shown = None
        super().__init__(*args, mininterval=60, miniters=1, **kwargs)

    def clear(self, *args, **kwargs):  # tqdm.write() clears bars before it writes: a line needs no clearing
        pass

    def close(self):
        if self.total is None or self.n < self.total:  # unfinished (an error may be the next line): no last word
            self.shown = self.n
        super().close()

    def display(self, msg=None, pos=None):
        if self.n != self.shown:
            self.shown = self.n
            self.fp.write(f"{self}\n")
            self.fp.flush()


def add_device_options(parser):
    """--device and --dtype: one rule in every script (pick_device, pick_dtype)."""
    parser.add_argument("--device", default="auto", help="auto: CUDA when present, else the CPU; or cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bf16 on a GPU, else fp32")


def given_options(parser, argv):
    """{dest: value} of the options argv names, told apart from defaults: argparse fills in a default only
    where the namespace has no value yet, so every option starts out as a marker."""
    unset = object()
    names = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    return {k: v for k, v in vars(parser.parse_args(argv, names)).items() if v is not unset}


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


GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def matmul_peak(device, dtype, n=1024, repeats=4):
    """FLOP/s of a large square matmul measured now: the honest MFU denominator on any machine."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for timed in (False, True):  # a warm-up, then the measurement
        t0 = time.perf_counter()
        for _ in range(repeats if timed else 1):
            a @ a
        sync()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def peak_flops(device, dtype):
    """The datasheet's dense bf16 peak of a known GPU, else a matmul measured now."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_BF16_PEAK.items():
            if key in name:
                return peak
    return matmul_peak(device, dtype)
