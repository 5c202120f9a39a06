"""Shared fixtures. Real assets come from ../shared/assets and are never committed."""

import contextlib
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("DIFFU_ASSETS", ROOT.parent / "shared" / "assets"))
STORIES_BIN = ASSETS / "stories260K" / "stories260K.bin"
STORIES_TOK = ASSETS / "stories260K" / "tok512.model"
STORY_START = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


def run(*args, check=True, env=None, cwd=ROOT):
    """Run one of the project's scripts as a user would -> a CompletedProcess (returncode, stdout, stderr).

    The script's `__main__` runs in this process (a new interpreter per command would import torch each
    time, about 2 s): its standard streams captured, an uncaught exception printed as a traceback with
    exit code 1, as the interpreter does. Signals, torchrun and file-size limits need real processes:
    those tests start them with subprocess."""
    script, *rest = map(str, args)
    code, out, err = run_as_main([str(ROOT / script), *rest], cwd, env or {})
    proc = subprocess.CompletedProcess([script, *rest], code, out, err)
    if check and code != 0:
        raise AssertionError(f"{args} failed ({code}):\n{out}\n{err}")
    return proc


def run_as_main(argv, cwd, env):
    """-> (exit code, standard output, standard error) of `python argv...`, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_path, saved_env = sys.argv, os.getcwd(), list(sys.path), dict(os.environ)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # train.py sets its own
    sys.argv, sys.path[0:0] = argv, [str(Path(argv[0]).resolve().parent)]
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            try:
                runpy.run_path(argv[0], run_name="__main__")
                code = 0
            except SystemExit as e:  # sys.exit("message") prints the message and exits with 1
                code = 1 if isinstance(e.code, str) else (e.code or 0)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
    return code, out.getvalue(), err.getvalue()


def assert_user_error(proc, *words):
    """A one-line error naming the problem and a non-zero exit, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and "error: " in lines[-1], proc.stderr  # ours: "error: ...", argparse: "prog: error: ..."
    assert "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w.lower() in lines[-1].lower(), (w, lines[-1])


@pytest.fixture(scope="session")
def stories_ckpt(tmp_path_factory):
    """stories260K converted once for the whole session (an AR checkpoint with a new mask token)."""
    out = tmp_path_factory.mktemp("ckpt") / "stories260K"
    run("convert.py", STORIES_BIN, out, "--tokenizer", STORIES_TOK)
    return out


def hf_tokenizer_files(directory, kind):
    """Put the real tokenizer files into a HF-style model directory, under HF's names."""
    if kind == "gpt2":
        shutil.copyfile(ASSETS / "gpt2" / "encoder.json", directory / "vocab.json")
        shutil.copyfile(ASSETS / "gpt2" / "vocab.bpe", directory / "merges.txt")
    else:
        shutil.copyfile(ASSETS / "llama2" / "tokenizer.model", directory / "tokenizer.model")
