"""Every bad input, in every script: one line `error: ...`, a non-zero exit, no traceback, nothing written.

One table: each row is a command, its exit code, and words the error must name. Each row runs the
script's `__main__` in this process (the disk-full row in a process of its own); the test reports every
row that failed, not just the first.
"""

import io
import json
import math
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ASSETS, ROOT, STORIES_BIN, STORIES_TOK, run, run_as_main

TEXT = ASSETS / "text" / "tinystories_val.txt"


class Evil:
    """Unpickling this runs a command: what weights_only=True must refuse."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    edit(Path(dst))
    return dst


def edit_json(file, change):
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def w(stories_ckpt, tmp_path_factory):
    """A workspace of good and broken inputs: each row below reads some of them."""
    d = tmp_path_factory.mktemp("bad")
    ns = type("Workspace", (), {})()
    ns.d, ns.ckpt = d, stories_ckpt
    ns.text = d / "text.txt"
    ns.text.write_text(TEXT.read_text()[:200_000])
    ns.data = d / "data"
    run("data/prepare.py", "--tokenizer", stories_ckpt, "--out", ns.data, ns.text, "--workers", "1")
    ns.run = d / "run"
    tiny = ["--batch-size", "2", "--block-size", "32", "--max-iters", "2", "--eval-iters", "1", "--eval-interval", "2"]
    run("train.py", "--init-from", stories_ckpt, "--data-dir", ns.data, "--out-dir", ns.run, *tiny)

    # broken checkpoints
    ns.ckpt_model_null = edited_copy(ns.ckpt, d / "model_null", lambda c: edit_json(c / "config.json", nullify))
    ns.ckpt_n_layer_str = edited_copy(
        ns.ckpt, d / "n_layer_str", lambda c: edit_json(c / "config.json", lambda m: m["model"].update(n_layer="5"))
    )
    ns.ckpt_no_vocab = edited_copy(
        ns.ckpt, d / "no_vocab", lambda c: edit_json(c / "config.json", lambda m: m["model"].pop("vocab_size"))
    )
    ns.ckpt_config_list = edited_copy(ns.ckpt, d / "config_list", lambda c: (c / "config.json").write_text("[1, 2]"))
    ns.ckpt_no_tokenizer = edited_copy(ns.ckpt, d / "no_tok", lambda c: (c / "tokenizer.model").unlink())
    ns.ckpt_truncated = edited_copy(ns.ckpt, d / "trunc_weights", lambda c: truncate(c / "model.safetensors"))
    ns.ckpt_blocks = edited_copy(
        ns.ckpt,
        d / "blocks",
        lambda c: edit_json(c / "config.json", lambda m: m.update(objective="diffusion", diffusion_block=8)),
    )
    ns.ckpt_nan = edited_copy(ns.ckpt, d / "nan_weights", lambda c: poison(c / "model.safetensors"))
    ns.ckpt_objective = edited_copy(
        ns.ckpt, d / "objective", lambda c: edit_json(c / "config.json", lambda m: m.update(objective="mlm"))
    )
    ns.ckpt_block_bool = edited_copy(
        ns.ckpt, d / "block_bool", lambda c: edit_json(c / "config.json", lambda m: m.update(diffusion_block=True))
    )
    for name, edit in {  # issue 29's checkpoints: a tokenizer without BOS (SmolLM2's), config values of wrong kinds
        "no_bos": dict(bos_token_id=None),
        "block_four": dict(objective="diffusion", diffusion_block="four"),
        "block_negative": dict(objective="diffusion", diffusion_block=-2),
        "block_huge": dict(objective="diffusion", diffusion_block=100000),
        "bos_outside": dict(bos_token_id=99999),
        "tokenizer_path": dict(tokenizer={"type": "sentencepiece", "files": ["../tokenizer.model"]}),
    }.items():
        setattr(
            ns,
            f"ckpt_{name}",
            edited_copy(ns.ckpt, d / name, lambda c, e=edit: edit_json(c / "config.json", lambda m: m.update(e))),
        )
    ns.ckpt_mask_str = edited_copy(
        ns.ckpt, d / "mask_str", lambda c: edit_json(c / "config.json", lambda m: m.update(mask_token_id="3"))
    )

    # broken runs (resume)
    ns.run_truncated_state = edited_copy(ns.run, d / "run_trunc", lambda r: truncate(r / "train_state.pt"))
    ns.run_evil_state = edited_copy(ns.run, d / "run_evil", lambda r: (r / "train_state.pt").write_bytes(evil()))
    ns.run_bad_metrics = edited_copy(ns.run, d / "run_metrics", lambda r: (r / "metrics.jsonl").write_text("{oops\n"))
    ns.run_step_str = edited_copy(
        ns.run, d / "run_step_str", lambda r: edit_json(r / "config.json", lambda m: m["training"].update(step="2"))
    )
    ns.run_no_step = edited_copy(
        ns.run, d / "run_no_step", lambda r: edit_json(r / "config.json", lambda m: m["training"].pop("step"))
    )
    ns.run_no_state = edited_copy(ns.run, d / "run_nostate", lambda r: (r / "train_state.pt").unlink())

    # broken data
    ns.data_odd = edited_copy(ns.data, d / "data_odd", lambda x: (x / "train-text-00000.bin").open("ab").write(b"\x01"))
    ns.data_bad_meta = edited_copy(ns.data, d / "data_meta", lambda x: (x / "meta.json").write_text("{not json"))
    ns.data_other_tok = edited_copy(
        ns.data, d / "data_tok", lambda x: edit_json(x / "meta.json", lambda m: m.update(tokenizer_fingerprint="0"))
    )
    (d / "empty_dir").mkdir()
    (d / "broken.gguf").write_bytes(b"GGUF" + bytes(20))  # the magic number, then nothing GGUF can read

    # broken HF models for convert.py
    from test_convert import tiny_gpt2

    ns.hf = d / "hf"
    tiny_gpt2(ns.hf)
    ns.hf_bert = edited_copy(ns.hf, d / "bert", lambda m: (m / "config.json").write_text('{"model_type": "bert"}'))
    ns.hf_trunc = edited_copy(ns.hf, d / "hf_trunc", lambda m: truncate(m / "model.safetensors"))
    ns.hf_garbled = edited_copy(ns.hf, d / "hf_garbled", lambda m: (m / "model.safetensors").write_bytes(b"\0x" * 99))
    ns.hf_shape = edited_copy(
        ns.hf, d / "hf_shape", lambda m: edit_json(m / "config.json", lambda c: c.update(n_embd=64))
    )
    ns.hf_layer_str = edited_copy(
        ns.hf, d / "hf_layer_str", lambda m: edit_json(m / "config.json", lambda c: c.update(n_layer="2"))
    )
    ns.hf_list = edited_copy(ns.hf, d / "hf_list", lambda m: (m / "config.json").write_text("[]"))

    def evil_bin(m):
        (m / "model.safetensors").unlink()
        (m / "pytorch_model.bin").write_bytes(evil())

    ns.hf_evil = edited_copy(ns.hf, d / "hf_evil", evil_bin)
    ns.stories_trunc = d / "stories_trunc.bin"
    ns.stories_trunc.write_bytes(STORIES_BIN.read_bytes()[:5000])

    # files
    for name, content in {
        "empty.txt": "",
        "blank.txt": "\n\n",
        "one_word.txt": "word\n",
        "not_json.jsonl": "not json\n",
        "no_choices.jsonl": '{"context": "a", "label": 0}\n',
        "empty_choices.jsonl": '{"context": "a", "choices": [], "label": 0}\n',
        "empty_choice.jsonl": '{"context": "a", "choices": ["", "b"], "label": 0}\n',
        "label_out.jsonl": '{"context": "a", "choices": ["x", "y"], "label": 2}\n',
        "no_label.jsonl": '{"context": "a", "choices": ["x", "y"]}\n',
        "list.json": "[1, 2]\n",
        "no_prompt.jsonl": '{"prompt": "a"}\n{"suffix": "b"}\n',
        "bad_suffix.txt": 'Once upon a time\n{"prompt": "a", "suffix": 3}\n',
        "a_file.txt": "the user's own file, not a checkpoint\n",
        "long.txt": "Once upon a time\nLily\n" + "the cat sat on the mat " * 200 + "\n",
        "unknown_option.json": '{"learning_rate": 1}\n',
        "empty_prompt.jsonl": '{"prompt": ""}\n{"prompt": "Hello"}\n',
        "with_suffix.jsonl": '{"prompt": "Once"}\n{"prompt": "Lily", "suffix": " The end."}\n',
        "no_text.jsonl": '{"passage": "the cat sat on the mat"}\n',
        "long_pairs.jsonl": json.dumps({"prompt": "one two " * 40, "response": "three " * 40}) + "\n",
        "empty.gguf": "",
    }.items():
        (d / name).write_text(content)
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (d / "random.gguf").write_bytes(bytes(range(256)) * 40)
    (d / "link.jsonl").symlink_to(d / "a_file.txt")  # as /dev/stdout is a link: a rename would replace it
    (d / "texts").mkdir()
    (d / "texts" / "a.txt").write_text(TEXT.read_text()[:20_000])
    return ns


def poison(file):
    """One NaN in the weights (what a diverged run would have saved, were it not refused)."""
    from safetensors.torch import load_file, save_file

    state = load_file(file)
    next(iter(state.values())).view(-1)[0] = math.nan
    save_file(state, file)


def nullify(meta):
    meta["model"] = None


def truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def evil():

    buf = io.BytesIO()
    pickle.dump(Evil(), buf)
    return buf.getvalue()


def disk_full():
    """Files may not grow past 64 KB: writes fail as on a full disk (EFBIG rather than ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


OUT = "OUT"  # a fresh output path per row; it must not exist afterwards
LONGER = ["--max-iters", "4", "--extend-schedule"]  # a resume that asks for more steps than the run has done


def train(w, *extra, init=None, data=None, out=OUT):
    """train.py from the workspace's checkpoint and data into a fresh output, plus `extra`."""
    return ["train.py", "--init-from", init or w.ckpt, "--data-dir", data or w.data, "--out-dir", out, *extra]


def resume(run_dir, *extra):
    return ["train.py", "--init-from", "resume", "--out-dir", run_dir, *extra]


CUDA = "--device", "cuda"


def genppl_blocks(w, *extra):
    return ["lab/eval.py", "--ckpt", w.ckpt_blocks, "--task", "genppl", "--judge", w.ckpt, *extra]


# (script and arguments, as a function of the workspace) -> (exit code, words the one-line error names)
ROWS = [
    # convert.py
    (lambda w: ["convert.py", w.d / "nope", OUT], 1, ["does not exist"]),
    (lambda w: ["convert.py", w.d / "empty_dir", OUT], 1, ["config.json"]),
    (lambda w: ["convert.py", w.hf_bert, OUT], 1, ["unsupported model_type", "bert"]),
    (lambda w: ["convert.py", w.hf_trunc, OUT], 1, ["corrupted or truncated"]),
    (lambda w: ["convert.py", w.hf_garbled, OUT], 1, ["corrupted or truncated"]),
    (lambda w: ["convert.py", w.hf_shape, OUT], 1, ["shape"]),
    (lambda w: ["convert.py", w.hf_layer_str, OUT], 1, ["n_layer"]),
    (lambda w: ["convert.py", w.hf_list, OUT], 1, ["config.json", "object"]),
    (lambda w: ["convert.py", w.hf_evil, OUT], 1, ["pytorch_model.bin", "refused"]),
    (lambda w: ["convert.py", w.hf, OUT, "--mask-token", "60000"], 1, ["outside the vocabulary"]),
    (lambda w: ["convert.py", w.hf, OUT, "--mask-token", "x"], 1, ["--mask-token"]),
    (lambda w: ["convert.py", w.stories_trunc, OUT, "--tokenizer", STORIES_TOK], 1, ["truncated"]),
    (lambda w: ["convert.py", STORIES_BIN, OUT], 1, ["tokenizer"]),
    (lambda w: ["convert.py", STORIES_BIN, OUT, "--tokenizer", w.d / "binary.bin"], 1, ["binary.bin"]),
    (lambda w: ["convert.py", w.hf, w.d / "empty_dir"], 1, ["already exists"]),
    (lambda w: ["convert.py", w.hf, w.d / "a_file.txt", "--force"], 1, ["not a checkpoint"]),
    (lambda w: ["convert.py", STORIES_BIN, OUT, "--tokenizer", STORIES_TOK, "--mask-token", "2"], 1, ["BOS or EOS"]),
    (lambda w: ["convert.py", w.hf, OUT, "--bogus"], 2, ["unrecognized arguments"]),
    (lambda w: ["convert.py", w.d / "broken.gguf", OUT], 1, ["GGUF"]),
    ("disk full", lambda w: ["convert.py", STORIES_BIN, OUT, "--tokenizer", STORIES_TOK], 1, ["cannot write", "large"]),
    ("disk full", lambda w: train(w, "--max-iters", "1", "--block-size", "32"), 1, ["cannot write", "large"]),
    # data/prepare.py
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, w.text, "--workers", "-3"], 2, ["--workers"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, w.d / "nope.txt"], 1, ["nope.txt"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, w.d / "blank.txt"], 1, ["no train data"]),
    (
        lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, w.d / "binary.txt"],
        1,
        ["binary.txt", "UTF-8"],
    ),
    (lambda w: ["data/prepare.py", "--tokenizer", w.d / "nope", "--out", OUT, w.text], 1, ["does not exist"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", w.d / "empty_dir", w.text], 1, ["exists"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", w.hf, w.text, "--force"], 1, ["not a data/prepare"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, "--recipe", "bogus"], 2, ["invalid choice"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, w.text, "--tokens", "1e400"], 2, ["--tokens"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", ".", w.text, "--force"], 1, ["--out"]),
    (lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, w.text, "--source", w.d], 1, ["--recipe"]),
    (
        lambda w: [
            "data/prepare.py",
            "--tokenizer",
            w.ckpt,
            "--out",
            OUT,
            "--recipe",
            "fineweb",
            "--source",
            w.d,
            "--source",
            w.d,
        ],
        1,
        ["twice"],
    ),
    # train.py
    (lambda w: train(w, "--batch-size", "0"), 2, ["--batch-size", "at least 1"]),
    (lambda w: train(w, "--block-size", "1024"), 1, ["beyond the model"]),
    (lambda w: train(w, "--block-size", "2"), 2, ["--block-size", "at least 3"]),
    (lambda w: train(w, "--lr", "0"), 2, ["--lr", "positive"]),
    (lambda w: train(w, *CUDA), 1, ["cuda"]),
    (lambda w: train(w, "--bogus"), 2, ["unrecognized"]),
    (lambda w: train(w, data=w.d / "nope"), 1, ["meta.json"]),
    (lambda w: train(w, data=w.data_odd), 1, ["train-text-00000.bin"]),
    (lambda w: train(w, data=w.data_bad_meta), 1, ["meta.json"]),
    (lambda w: train(w, data=w.data_other_tok), 1, ["tokenizer"]),
    (lambda w: train(w, out=w.run), 1, ["already exists"]),
    (lambda w: train(w, "--config", w.d / "list.json"), 1, ["JSON object"]),
    (lambda w: train(w, "--config", w.d / "nope.json"), 1, ["--config"]),
    (lambda w: train(w, "--config", w.d / "unknown_option.json"), 1, ["learning_rate"]),
    (lambda w: train(w, init=w.ckpt_model_null), 1, ["model"]),
    (lambda w: resume(w.d / "nope"), 1, ["does not exist"]),
    (lambda w: resume(w.ckpt), 1, ["not a train.py output"]),
    (lambda w: resume(w.run_truncated_state, *LONGER), 1, ["train_state.pt", "truncated"]),
    (lambda w: resume(w.run_evil_state, *LONGER), 1, ["train_state.pt", "refused"]),
    (lambda w: resume(w.run_bad_metrics, *LONGER), 1, ["metrics.jsonl"]),
    (lambda w: resume(w.run_no_state, *LONGER), 1, ["train_state.pt"]),
    (lambda w: resume(w.run, "--seed", "7"), 1, ["--seed 7 contradicts"]),
    # sample.py
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--length", "600"], 1, ["exceeds the model's context"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_nan], 1, ["non-finite weights"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_blocks, "--suffix", "The end."], 1, ["block-diffusion", "suffix"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_blocks, "--cache"], 1, ["block-diffusion", "exact"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_blocks, "--length", "64", "--steps", "4"], 1, ["--steps 4", "9 blocks"]),
    (lambda w: train(w, init=w.ckpt_nan), 1, ["non-finite weights"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--steps", "-1"], 2, ["--steps"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--strategy", "bogus"], 2, ["invalid choice"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--threshold", "1.5"], 2, ["--threshold"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--top-p", "0"], 2, ["--top-p"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompt-file", w.d / "binary.bin"], 1, ["binary.bin", "UTF-8"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompt-file", w.d / "nope.txt"], 1, ["nope.txt"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, *CUDA], 1, ["cuda"]),
    (lambda w: ["sample.py", "--ckpt", w.d / "nope"], 1, ["does not exist"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompts", w.d / "nope.txt"], 1, ["--prompts", "nope.txt"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompts", w.d / "blank.txt"], 1, ["no prompt"]),
    (
        lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompts", w.d / "no_prompt.jsonl"],
        1,
        ["no_prompt.jsonl:2", "prompt"],
    ),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompts", w.d / "long.txt"], 1, ["long.txt:3", "context"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--batch-size", "0"], 2, ["--batch-size"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--output", w.d / "nope" / "s.jsonl"], 2, ["--output", "cannot write"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--output", w.d], 2, ["--output", "cannot write"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompts", w.d / "bad_suffix.txt"], 1, ["bad_suffix.txt:2", "suffix"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompts", w.d / "long.txt", "--prompt", "x"], 1, ["--prompts"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_no_tokenizer], 1, ["tokenizer"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_model_null], 1, ["model"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_n_layer_str], 1, ["n_layer"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_no_vocab], 1, ["vocab_size"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_config_list], 1, ["config.json", "object"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_truncated], 1, ["corrupted or truncated"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_objective], 1, ["config.json", "objective", "'mlm'"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_block_bool], 1, ["diffusion_block", "True"]),
    (lambda w: train(w, init=w.ckpt_mask_str), 1, ["mask_token_id", "'3'"]),
    # eval.py
    *[
        (lambda w, f=f, task=task: ["lab/eval.py", "--ckpt", w.ckpt, "--task", task, "--data", w.d / f], 1, words)
        for task, f, words in [
            ("choice", "no_choices.jsonl", ["choices"]),
            ("choice", "empty_choices.jsonl", ["choices"]),
            ("choice", "empty_choice.jsonl", ["choices"]),
            ("choice", "label_out.jsonl", ["label"]),
            ("choice", "no_label.jsonl", ["label"]),
            ("choice", "not_json.jsonl", ["not valid JSON"]),
            ("choice", "empty.txt", ["no items"]),
            ("lambada", "empty.txt", ["no items"]),
            ("lambada", "one_word.txt", ["no context"]),
            ("infill", "empty.txt", ["no story"]),
            ("nll", "empty.txt", ["no"]),
            ("nll", "binary.txt", ["binary.txt", "UTF-8"]),
            ("nll", "nope.txt", ["nope.txt"]),
        ]
    ],
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--block-size", "9999"],
        1,
        ["--block-size"],
    ),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "genppl", "--judge", w.ckpt, "--length", "9999"],
        1,
        ["--length"],
    ),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "genppl", "--judge", w.ckpt, "--strategy", "bogus"],
        2,
        ["invalid choice"],
    ),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, *CUDA], 1, ["cuda"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt_no_vocab, "--task", "nll", "--data", w.text], 1, ["vocab_size"]),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--batch-size", "0"],
        2,
        ["--batch-size"],
    ),
    # miniature.py: its studies' options, refused before any download or work
    (lambda w: ["lab/miniature.py", "--out", OUT, "--levers", "3,x"], 1, ["--levers", "row numbers"]),
    (lambda w: ["lab/smollm2.py", "--assets", w.d / "empty_dir", "--out", OUT], 1, ["--assets", "lacks"]),
    (lambda w: ["lab/smollm2.py", "--assets", ASSETS, "--out", OUT, "--device", "cuda:7"], 1, ["cuda"]),
    (lambda w: ["lab/smollm2.py", "--assets", ASSETS, "--out", w.d / "empty_dir"], 1, ["already exists"]),
    (lambda w: ["lab/smollm2.py", "--assets", ASSETS, "--minutes", "0"], 2, ["--minutes"]),
    (lambda w: ["lab/miniature.py", "--out", OUT, "--levers", "99"], 1, ["--levers", "0 to 11"]),
    (lambda w: ["lab/miniature.py", "--out", OUT, "--scaling", "--points", "1,0"], 2, ["--points"]),
    (lambda w: ["lab/miniature.py", "--out", OUT, "--gen-steps", "a,b"], 2, ["--gen-steps"]),
    (lambda w: ["lab/miniature.py", "--out", OUT, "--iters", "0"], 2, ["--iters"]),
    (lambda w: ["lab/miniature.py", "--out", OUT, "--quick"], 1, ["--quick", "--scaling"]),
    (lambda w: ["lab/miniature.py", "--out", w.hf, "--force"], 1, ["not a lab/miniature.py output"]),
    (lambda w: ["lab/bench.py", "--skip", "bogus"], 2, ["--skip", "bogus"]),
    (lambda w: ["lab/bench.py", "--quality-ckpt", w.ckpt], 1, ["--judge"]),
    (lambda w: ["lab/bench.py", *CUDA], 1, ["cuda"]),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--block-size", "1"],
        2,
        ["--block-size"],
    ),
    (lambda w: ["lab/bench.py", "--json", w.d / "nope" / "rows.json"], 2, ["--json", "cannot write"]),
    (lambda w: ["lab/gpu_check.py", "--only", "flex,bogus"], 2, ["--only", "bogus"]),
    (lambda w: ["lab/gpu_check.py", "--device", "cuda:7"], 1, ["cuda"]),
    (lambda w: ["lab/gpu_check.py", "--json", w.d / "nope" / "rows.json"], 2, ["--json", "cannot write"]),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--output", w.d / "nope" / "r"],
        2,
        ["--output"],
    ),
    (lambda w: ["lab/miniature.py", "--out", OUT, "--scaling", "--levers"], 1, ["one at a time"]),
    # issue 29: tracebacks
    (lambda w: ["sample.py", "--ckpt", w.ckpt_no_bos, "--ar", "--prompt", ""], 1, ["prompt is empty", "BOS"]),
    (
        lambda w: [
            "sample.py",
            "--ckpt",
            w.ckpt_no_bos,
            "--diffusion",
            "--prompt",
            "",
            "--length",
            "8",
            "--steps",
            "4",
        ],
        1,
        ["prompt is empty", "BOS"],
    ),
    (
        lambda w: ["sample.py", "--ckpt", w.ckpt_no_bos, "--ar", "--prompts", w.d / "empty_prompt.jsonl"],
        1,
        ["empty_prompt.jsonl:1", "prompt is empty"],
    ),
    (lambda w: ["convert.py", STORIES_BIN, "/proc/x_out", "--tokenizer", STORIES_TOK], 1, ["cannot write", "/proc"]),
    (lambda w: train(w, "--fsdp"), 1, ["--fsdp", "torchrun"]),
    (lambda w: ["lab/miniature.py", "--out", w.d / "a_file.txt"], 1, ["--out", "not a folder"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_block_four], 1, ["diffusion_block", "'four'"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt_block_four, "--task", "nll", "--data", w.text], 1, ["'four'"]),
    # issue 29: false messages ("kept" of a checkpoint that was never written)
    (lambda w: train(w, "--lr", "inf"), 2, ["--lr", "finite"]),
    (lambda w: train(w, "--lr", "1e30", "--max-iters", "3"), 1, ["diverged", "no checkpoint was written"]),
    (
        lambda w: train(w, "--lr", "1e4", "--warmup-iters", "300", "--eval-interval", "2", "--max-iters", "3"),
        1,
        ["diverged", "no checkpoint was written"],
    ),
    # issue 29: silent or ignored
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt_blocks, "--task", "infill", "--data", w.text], 1, ["block", "infill"]),
    (lambda w: genppl_blocks(w, "--cache"), 1, ["block-diffusion", "--cache"]),
    (lambda w: genppl_blocks(w, "--block-length", "16"), 1, ["block-diffusion", "--block-length"]),
    (lambda w: train(w, "--diffusion-block", "4", "--objective", "ar"), 1, ["--diffusion-block", "--objective ar"]),
    (lambda w: train(w, "--anneal-steps", "9", "--objective", "ar"), 1, ["--anneal-steps", "--objective ar"]),
    (lambda w: train(w, "--objective", "ar", "--no-shift"), 1, ["--no-shift", "does nothing", "--objective ar"]),
    (lambda w: train(w, "--t-sampling", "stratified", "--objective", "ar"), 1, ["--t-sampling", "--objective ar"]),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "lambada", "--data", w.d / "no_text.jsonl"],
        1,
        ["no_text.jsonl:1", "text"],
    ),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_block_negative], 1, ["diffusion_block", "-2"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_block_huge], 1, ["diffusion_block 100000", "block_size"]),
    (lambda w: train(w, init=w.ckpt_block_negative), 1, ["diffusion_block", "-2"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_blocks, "--block-length", "16"], 1, ["blocks of 8", "--block-length"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--length", "8"], 1, ["AR checkpoint", "--ar", "--diffusion"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--steps", "4"], 1, ["--steps", "AR decoding"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--strategy", "random"], 1, ["--strategy", "AR decoding"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--show"], 1, ["--show", "AR decoding"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--speculative", "--threshold", "0.5"], 1, ["--threshold", "AR"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--diffusion"], 1, ["--diffusion", "AR decoding"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--greedy", "--temperature", "2"], 1, ["--temperature"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--prompts", w.d / "with_suffix.jsonl"], 1, ["suffix", "--ar"]),
    # issue 29: lost (a source replaced by its own conversion)
    (lambda w: ["convert.py", w.hf, w.hf, "--force"], 1, ["source"]),
    (lambda w: ["convert.py", w.hf, w.hf / "sub", "--force"], 1, ["source"]),
    (lambda w: ["convert.py", w.hf, w.d, "--force"], 1, ["source"]),
    (lambda w: ["convert.py", w.hf / ".." / w.hf.name, w.hf, "--force"], 1, ["source"]),
    # issue 29: smaller
    (lambda w: ["lab/miniature.py", "--out", OUT, "--blocks", "4096"], 1, ["--blocks", "--block-size"]),
    (
        lambda w: [
            "data/prepare.py",
            "--tokenizer",
            w.ckpt,
            "--out",
            OUT,
            "--sft",
            "--block-size",
            "32",
            w.d / "long_pairs.jsonl",
        ],
        1,
        ["skipped", "longer than --block-size 32"],
    ),
    (lambda w: ["convert.py", w.d / "empty.gguf", OUT], 1, ["GGUF"]),
    (lambda w: ["convert.py", w.d / "random.gguf", OUT], 1, ["GGUF"]),
    # found by a second attack
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--output", w.d / "link.jsonl"], 2, ["--output", "a link"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--cache"], 1, ["--cache", "nll"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "choice", "--data", w.text, "--greedy"], 1, ["--greedy"]),
    (
        lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", OUT, w.d / "texts", w.d / "texts" / "a.txt"],
        1,
        ["twice"],
    ),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "genppl", "--judge", w.ckpt, "--data", w.text],
        1,
        ["--data"],
    ),
    (
        lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--include-path", w.d],
        1,
        ["--include"],
    ),
    (lambda w: train(w, "--masked-blocks", "0.5"), 1, ["--masked-blocks", "--diffusion-block"]),
    (lambda w: resume(w.run_step_str, *LONGER), 1, ["training", "step", "an int"]),
    (lambda w: resume(w.run_no_step, *LONGER), 1, ["training", "step", "an int"]),
    (
        lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompts", w.d / "long.txt", "--output", w.d / "long.txt"],
        1,
        ["input"],
    ),
    (lambda w: ["sample.py", "--ckpt", w.ckpt, "--ar", "--output", w.ckpt / "config.json"], 1, ["lies in"]),
    (lambda w: ["sample.py", "--ckpt", w.run, "--ar", "--output", w.run / "samples.jsonl"], 1, ["lies in"]),
    (lambda w: resume(w.run, "--data-dir", w.run / "data", *LONGER), 1, ["--data-dir", "replaces whole"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--output", w.text], 1, ["input"]),
    (
        lambda w: ["sample.py", "--ckpt", w.ckpt, "--prompt", "x", "--prompt-file", w.d / "long.txt"],
        1,
        ["--prompt-file"],
    ),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_blocks, "--verifier", w.ckpt_blocks], 1, ["--verifier", "not an AR"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--judge", w.ckpt], 1, ["--judge"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "choice", "--data", w.text, "--t-grid"], 1, ["--t-grid"]),
    (lambda w: ["lab/eval.py", "--ckpt", w.ckpt, "--task", "nll", "--data", w.text, "--score", "elbo"], 1, ["--score"]),
    (
        lambda w: ["data/prepare.py", "--tokenizer", w.ckpt, "--out", w.data, "--force", w.data / "meta.json"],
        1,
        ["--out", "input"],
    ),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_bos_outside, "--ar"], 1, ["bos_token_id", "outside"]),
    (lambda w: ["sample.py", "--ckpt", w.ckpt_tokenizer_path, "--ar"], 1, ["tokenizer", "file names"]),
    # convert.py --to hf: a checkpoint exported as a Hugging Face directory
    (lambda w: ["convert.py", w.ckpt, w.d / "empty_dir", "--to", "hf"], 1, ["already exists"]),
    (lambda w: ["convert.py", w.ckpt, w.ckpt, "--to", "hf", "--force"], 1, ["source"]),
    (lambda w: ["convert.py", w.ckpt, w.ckpt_blocks, "--to", "hf", "--force"], 1, ["not an export"]),
    (lambda w: ["convert.py", w.ckpt, w.d / "a_file.txt", "--to", "hf", "--force"], 1, ["refusing to replace"]),
    (lambda w: ["convert.py", w.ckpt, OUT, "--to", "gguf"], 2, ["--to", "invalid choice"]),
    (lambda w: ["convert.py", w.hf, OUT, "--to", "hf"], 1, ["lacks 'model'", "not a checkpoint"]),
    (lambda w: ["convert.py", STORIES_BIN, OUT, "--to", "hf"], 1, ["not a directory"]),
    (lambda w: ["convert.py", w.ckpt_truncated, OUT, "--to", "hf"], 1, ["truncated"]),
    (lambda w: ["convert.py", w.ckpt_no_tokenizer, OUT, "--to", "hf"], 1, ["tokenizer file"]),
    (lambda w: ["convert.py", w.ckpt, OUT, "--to", "hf", "--mask-token", "5"], 1, ["--mask-token", "--to hf"]),
    (lambda w: ["convert.py", w.ckpt, OUT, "--to", "hf", "--shard-size", "lots"], 2, ["--shard-size", "5GB"]),
    (lambda w: ["convert.py", w.hf, OUT, "--shard-size", "1MB"], 1, ["--shard-size", "--to hf"]),
    ("disk full", lambda w: ["convert.py", w.ckpt, OUT, "--to", "hf"], 1, ["cannot write", "large"]),
]


def attempt(row, w, index):
    name, make, code, words = row if len(row) == 4 else (None, *row)
    out = w.d / f"out-{index}"
    script, *args = make(w)
    argv = [str(ROOT / script), *(str(out) if a == OUT else str(a) for a in args)]
    if name == "disk full":  # a file-size limit: only for a process of its own
        proc = subprocess.run(
            [sys.executable, *argv],
            cwd=w.d,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=disk_full,
        )
        returncode, stderr = proc.returncode, proc.stderr
    else:
        returncode, _, stderr = run_as_main(argv, w.d, {})  # relative outputs (and the evil pickle's file) land there
    lines = stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    problems = []
    if "Traceback" in stderr:
        problems.append("traceback")
    if returncode == 0:
        problems.append("silent success")
    elif returncode != code:
        problems.append(f"exit {returncode}, expected {code}")
    if "error: " not in last or any(word.lower() not in last.lower() for word in words):
        problems.append(f"error line lacks {words}")
    if out.exists():
        problems.append("wrote its output")
    return argv, problems, stderr


def test_every_bad_input_is_a_one_line_error(w):
    results = [attempt(row, w, i) for i, row in enumerate(ROWS)]
    failures = [f"{' '.join(argv)}: {', '.join(problems)}\n{err[-600:]}" for argv, problems, err in results if problems]
    tracebacks = sum("traceback" in p for _, p, _ in results)
    silent = sum("silent success" in p for _, p, _ in results)
    print(f"{len(ROWS)} rows tried, {tracebacks} tracebacks, {silent} silent successes, {len(failures)} failures")
    assert len(ROWS) >= 40
    assert not failures, "\n\n".join(failures)
    assert not (w.d / "pwned").exists()  # no pickle ran
    assert not [p for p in w.d.rglob(".*tmp-*")]  # no temporary directories left behind


@pytest.mark.parametrize(
    "script", ["convert", "data/prepare", "train", "sample", "lab/eval", "lab/bench", "lab/miniature", "lab/gpu_check"]
)
def test_help_gives_every_option_a_meaning_and_its_default(script, monkeypatch):
    import argparse
    import importlib.util

    parsers = []

    def capture(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    spec = importlib.util.spec_from_file_location(script.replace("/", "_"), ROOT / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit):
        (getattr(module, "parse_args", None) or module.main)([])
    parser = parsers[-1]
    assert parser.formatter_class.__name__ == "HelpFormatter"
    for action in parser._actions:
        assert action.help, f"{script}.py {action.option_strings or action.dest} has no help text"
        shown = parser.formatter_class("x")._get_help_string(action)
        if action.default not in (None, False, "", [], argparse.SUPPRESS) and action.option_strings:
            assert "default" in shown, (script, action.option_strings)
        if action.choices:
            assert all(str(c) in parser.format_help() for c in action.choices)


def test_convert_onto_its_own_source_leaves_it_byte_identical(w):
    """A source is never its own output however it is spelled: the same folder, one inside it, one around it."""
    files = lambda: {p: p.read_bytes() for p in sorted(w.hf.rglob("*")) if p.is_file()}
    before = files()
    for out in (w.hf, w.hf.parent / "." / w.hf.name, w.hf / "sub", w.hf.parent):
        proc = run("convert.py", w.hf, out, "--force", check=False)
        assert proc.returncode == 1 and "source" in proc.stderr.splitlines()[-1], proc.stderr
    assert files() == before


def test_lambada_reads_openai_jsonl_as_its_text_lines(w):
    """--task lambada --data F.jsonl: each line's "text" (OpenAI's lambada_test.jsonl), scored as the plain lines."""
    lines = (ASSETS / "eval" / "lambada_test.txt").read_text().splitlines()[:3]
    (w.d / "lambada.txt").write_text("".join(line + "\n" for line in lines))
    (w.d / "lambada.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    results = []
    for name in ("lambada.txt", "lambada.jsonl"):
        out = w.d / f"{name}.items"
        run("lab/eval.py", "--ckpt", w.ckpt, "--task", "lambada", "--data", w.d / name, "--output", out)
        results.append(out.read_text())
    assert results[0] == results[1] and len(results[0].splitlines()) == 3


def test_sample_writes_each_batch_with_progress_and_the_batch_passes(w):
    """Many samples: progress on standard error, the output complete at the end, no OUTPUT.partial left; each
    record's batch_forward_passes is its batch's (the key says so)."""
    out = w.d / "many.jsonl"
    args = ["--ckpt", w.ckpt, "--ar", "--prompt", "Once", "--length", "4", "--num-samples", "5", "--batch-size", "2"]
    proc = run("sample.py", *args, "--output", out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 and all("batch_forward_passes" in r for r in records)
    assert "5/5" in proc.stderr and not (w.d / "many.jsonl.partial").exists()


def test_ar_training_from_a_block_checkpoint_records_no_blocks(w, tmp_path):
    """--objective ar from a block-diffusion checkpoint trains no blocks, and says none (nor an MFU on a CPU)."""
    proc = run(
        *train(
            w, "--objective", "ar", "--max-iters", "1", "--block-size", "32", init=w.ckpt_blocks, out=tmp_path / "ar"
        )
    )
    meta = json.loads((tmp_path / "ar" / "config.json").read_text())
    assert meta["training"]["args"]["diffusion_block"] == 0 and "mfu=" not in proc.stderr


def test_a_linked_output_folder_is_written_where_it_points(w, tmp_path):
    """convert.py --force onto a link to a checkpoint: the link stays, its target becomes the new checkpoint
    (the atomic replace once renamed the link aside, then failed on rmtree of a link: a traceback)."""
    target, link = tmp_path / "target", tmp_path / "link"
    shutil.copytree(w.ckpt_blocks, target)
    link.symlink_to(target)
    run("convert.py", STORIES_BIN, link, "--tokenizer", STORIES_TOK, "--force")
    assert link.is_symlink() and "diffusion_block" not in json.loads((target / "config.json").read_text())
