"""Shared fixtures. Real assets come from ../shared/assets and are never committed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("DIFFU_ASSETS", ROOT.parent / "shared" / "assets"))
STORIES_BIN = ASSETS / "stories260K" / "stories260K.bin"
STORIES_TOK = ASSETS / "stories260K" / "tok512.model"
STORY_START = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


def run(*args, check=True, env=None):
    """Run one of the project's scripts as a user would; return the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


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
