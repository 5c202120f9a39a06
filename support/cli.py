"""What every script's command line shares: the one-line error, --help's format, value checks, --device / --dtype,
and progress on long work.

A script raises UserError for a problem with its input and prints it, at its top, as one line `error: ...`; a bad
option value is refused before any work by its argparse type= (checked, COUNT, ...).
"""

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
from pathlib import Path

import torch
from tqdm import tqdm


class UserError(Exception):
    """A problem with the user's input; scripts print it as one line and exit non-zero."""


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

POSITIVE = checked(float, lambda v: 0 < v < math.inf, "positive and finite")

PROBABILITY = checked(float, lambda v: 0 < v <= 1, "in (0, 1]")

BYTE_UNITS = {"": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}  # transformers'


def byte_size(text):
    """An argparse type for a size in bytes: 5GB, 500MB, 2GiB or a plain number, as transformers writes them."""
    size = re.fullmatch(r"(\d+(?:\.\d+)?) *([kmg]i?b)?", text.strip().lower())
    n = float(size[1]) * BYTE_UNITS[size[2] or ""] if size else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a size such as 5GB, 500MB or 2GiB, got {text}")
    return int(n)


def output_file(text):
    """An argparse type for --output / --json: refused before any work unless it can be written. Written by an
    atomic rename, which replaces the name itself: a link (/dev/stdout) or a folder there is refused."""
    path = Path(text)
    if path.is_symlink() or path.exists() and not path.is_file():
        raise argparse.ArgumentTypeError(f"cannot write {text}: a link or not a file (the rename would replace it)")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: not a file in a writable folder")
    return path


def given_options(parser, argv):
    """{dest: value} of the options argv names, told apart from defaults: argparse fills in a default only
    where the namespace has no value yet, so every option starts out as a marker."""
    unset = object()
    names = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    return {k: v for k, v in vars(parser.parse_args(argv, names)).items() if v is not unset}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_device_options(parser):
    """--device and --dtype: one rule in every script (pick_device, pick_dtype)."""
    parser.add_argument("--device", default="auto", help="auto: CUDA when present, else the CPU; or cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bf16 on a GPU, else fp32")


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


def pick_dtype(name, device):
    """--dtype: 'auto' is bf16 on a GPU that has it, fp32 elsewhere (CPUs without bf16 units are ~100x slower)."""
    if name != "auto":
        return DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


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


def as_argv(options):
    """{name: value} -> the command-line words that say it: --name value, a bare --name for True."""
    words = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        words += [] if value is None or value is False else [flag] if value is True else [flag, str(value)]
    return words


def read_preset(path, known):
    """A --config file: a JSON object of options (keys as the options' names; "_"-prefixed keys are comments)."""
    try:
        preset = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read --config {path}: {e}") from None
    if not isinstance(preset, dict):
        raise UserError(f"--config {path} must hold a JSON object of options, not {type(preset).__name__}")
    preset = {k.replace("-", "_"): v for k, v in preset.items() if not k.startswith("_")}
    if set(preset) - known:
        raise UserError(f"{path}: unknown options {sorted(set(preset) - known)}")
    return preset


class StopRequest:
    """SIGINT / SIGTERM set a flag: a long loop finishes its step, saves and exits with 128 + the signal (train.py)."""

    def __init__(self):
        self.signal = None
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, lambda signum, frame: setattr(self, "signal", signum))


def precision(name, device):
    """--dtype -> (dtype, autocast context): bf16 where the GPU has it and fp32 elsewhere, by pick_dtype's rule."""
    dtype = pick_dtype(name, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return dtype, torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def run_main(main):
    """A script's entry: a UserError is one line `error: ...` (exit 1); a reader that stops early (`| head`) ends
    the script quietly, as it ends cat, with the shell's code for SIGPIPE."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail too
        sys.exit(128 + signal.SIGPIPE)
