"""The golden run: a seeded pass through the whole pipeline, recorded, so a refactor can show that it changed no result.

    python lab/golden.py --assets ../shared/assets --out /tmp/golden-before
    ... refactor ...
    python lab/golden.py --assets ../shared/assets --out /tmp/golden-after --compare /tmp/golden-before/golden.json

It runs the scripts as a user would (convert stories260K, a GGUF file and tiny Hugging Face models; prepare
TinyStories; train the diffusion LM with annealing, block diffusion and the AR baseline; sample in every
decoding mode; evaluate every task) and records what they produce: weight and shard hashes, every metric,
every sampled text and token, every evaluation number. --compare lists each value that differs and exits 1.

Every script runs on one thread (OMP_NUM_THREADS=1), so the numbers do not depend on the machine's load; they
may depend on the processor and the PyTorch build, so compare runs made on the same machine. About 3 minutes.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    {"prompt": "Once upon a time"},
    {"prompt": "Lily went to the park with her mom. She saw a big"},
    {"prompt": "Tom"},
]
CHOICES = [
    {"context": "Lily went to the park. She played on the", "choices": ["swing", "moon"], "label": 0},
    {"context": "Tom was hungry. He ate an", "choices": ["owl", "apple"], "label": 1},
    {"context": "The cat sat on the", "choices": ["mat", "sun"], "label": 0},
]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class Run:
    """Runs the project's scripts in `out` and keeps what they produce in `record`."""

    def __init__(self, out):
        self.out, self.record, self.env = out, {}, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

    def script(self, name, *args):
        command = [sys.executable, str(ROOT / name), *map(str, args)]
        done = subprocess.run(command, cwd=self.out, env=self.env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def checkpoint(self, key, directory):
        """The weights' hash and, for a training run, every line of its metrics (times removed)."""
        self.record[f"{key}/weights"] = sha(self.out / directory / "model.safetensors")
        metrics = self.out / directory / "metrics.jsonl"
        if metrics.is_file():
            self.record[f"{key}/metrics"] = [json.loads(line) for line in metrics.read_text().splitlines()]

    def sample(self, key, ckpt, *args):
        self.script("sample.py", "--ckpt", ckpt, "--length", 24, "--output", "s.jsonl", *args)
        self.record[f"sample/{key}"] = [json.loads(line) for line in (self.out / "s.jsonl").read_text().splitlines()]

    def eval(self, key, ckpt, *args):
        result = json.loads(self.script("lab/eval.py", "--ckpt", ckpt, *args).strip().splitlines()[-1])
        self.record[f"eval/{key}"] = result


def tiny_hf_models(out):
    """A tiny random GPT-2 and Qwen2 saved by transformers (seeded): the conversion of HF directories."""
    import torch
    import transformers

    made = {}
    for name, config, model in [
        ("gpt2", transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64), transformers.GPT2LMHeadModel),
        (
            "qwen2",
            transformers.Qwen2Config(
                vocab_size=512,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                tie_word_embeddings=False,
            ),
            transformers.Qwen2ForCausalLM,
        ),
    ]:
        torch.manual_seed(0)
        model(config).save_pretrained(out / f"hf-{name}")
        made[name] = out / f"hf-{name}"
    return made


def pipeline(run, assets):
    stories = assets / "stories260K"
    # convert
    run.script("convert.py", stories / "stories260K.bin", "base", "--tokenizer", stories / "tok512.model")
    run.checkpoint("convert/stories260K", "base")
    for name, directory in tiny_hf_models(run.out).items():
        tokenizer = ["--tokenizer", assets / "gpt2"] if name == "gpt2" else ["--tokenizer", stories / "tok512.model"]
        run.script("convert.py", directory, f"hf-{name}-ckpt", *tokenizer)
        run.checkpoint(f"convert/hf-{name}", f"hf-{name}-ckpt")
    run.script("convert.py", assets / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
    run.checkpoint("convert/smollm2", "smollm2")
    # prepare
    run.script(
        "data/prepare.py",
        assets / "text" / "tinystories_val.txt",
        "--tokenizer",
        "base",
        "--out",
        "data",
        "--val-fraction",
        0.05,
        "--val-tokens",
        20000,
        "--shard-tokens",
        100000,
    )
    run.record["prepare/shards"] = {p.name: sha(p) for p in sorted((run.out / "data").iterdir()) if p.is_file()}
    # train: the paper's recipe (annealing), block diffusion (complementary masks), the AR baseline
    common = [
        "--init-from",
        "base",
        "--data-dir",
        "data",
        "--batch-size",
        4,
        "--block-size",
        64,
        "--lr",
        1e-3,
        "--eval-interval",
        10,
        "--eval-iters",
        2,
        "--warmup-iters",
        2,
        "--seed",
        1,
    ]
    run.script("train.py", *common, "--out-dir", "diffusion", "--max-iters", 20, "--anneal-steps", 10)
    run.script(
        "train.py",
        *common,
        "--out-dir",
        "blocks",
        "--max-iters",
        20,
        "--diffusion-block",
        4,
        "--anneal-steps",
        5,
        "--complementary-masks",
    )
    run.script("train.py", *common, "--out-dir", "ar", "--max-iters", 10, "--objective", "ar")
    run.script("train.py", "--init-from", "resume", "--out-dir", "ar", "--max-iters", 20, "--extend-schedule")
    for key in ("diffusion", "blocks", "ar"):
        run.checkpoint(f"train/{key}", key)
    # sample: every decoding mode
    (run.out / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    many = ["--prompts", "prompts.jsonl", "--num-samples", 2, "--batch-size", 4]
    for strategy in ("random", "confidence", "margin", "entropy"):
        run.sample(f"diffusion/{strategy}", "diffusion", "--strategy", strategy, "--steps", 12, *many)
    run.sample("diffusion/threshold", "diffusion", "--threshold", 0.3, "--steps", 12, *many)
    run.sample("diffusion/block-length", "diffusion", "--block-length", 8, "--steps", 12, *many)
    run.sample("diffusion/cache", "diffusion", "--cache", "--block-length", 8, "--steps", 12, *many)
    run.sample("diffusion/random-threshold", "diffusion", "--strategy", "random", "--threshold", 0.5, *many)
    run.sample("diffusion/greedy", "diffusion", "--greedy", "--steps", 24, "--prompt", "Once upon a time")
    run.sample("diffusion/infill", "diffusion", "--prompt", "Lily went to the park.", "--suffix", " She was happy.")
    run.sample("diffusion/top-k", "diffusion", "--top-k", 20, "--temperature", 0.8, "--top-p", 1, *many)
    for strategy in ("random", "confidence"):
        run.sample(f"blocks/{strategy}", "blocks", "--strategy", strategy, "--steps", 12, *many)
    run.sample("blocks/threshold", "blocks", "--threshold", 0.3, *many)
    run.sample("blocks/block-length", "blocks", "--block-length", 2, "--steps", 16, *many)
    run.sample("blocks/greedy", "blocks", "--greedy", "--prompt", "Once upon a time")
    run.sample("blocks/ar", "blocks", "--ar", "--greedy", *many)
    run.sample("ar/greedy", "ar", "--ar", "--greedy", *many)
    run.sample("ar/sampling", "ar", "--ar", "--temperature", 0.9, "--top-p", 0.8, *many)
    run.sample("base/greedy", "base", "--ar", "--greedy", "--length", 40)
    run.sample("base/diffusion", "base", "--diffusion", "--steps", 8)
    # evaluate: every task
    (run.out / "choices.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHOICES))
    text, lambada = assets / "text" / "tinystories_val.txt", assets / "eval" / "lambada_test.txt"
    for ckpt in ("diffusion", "blocks", "ar"):
        run.eval(f"{ckpt}/nll", ckpt, "--task", "nll", "--data", text, "--limit", 4, "--mc", 4, "--block-size", 64)
        run.eval(f"{ckpt}/choice", ckpt, "--task", "choice", "--data", "choices.jsonl", "--mc", 4)
        run.eval(f"{ckpt}/lambada", ckpt, "--task", "lambada", "--data", lambada, "--limit", 8, "--greedy")
    run.eval(
        "diffusion/choice-elbo",
        "diffusion",
        "--task",
        "choice",
        "--data",
        "choices.jsonl",
        "--mc",
        4,
        "--score",
        "elbo",
    )
    run.eval("diffusion/nll-grid", "diffusion", "--task", "nll", "--data", text, "--limit", 2, "--t-grid", "--mc", 4)
    run.eval("diffusion/infill", "diffusion", "--task", "infill", "--data", text, "--limit", 3)
    for ckpt in ("diffusion", "blocks"):
        run.eval(
            f"{ckpt}/genppl", ckpt, "--task", "genppl", "--judge", "base", "--limit", 3, "--length", 16, "--steps", 8
        )


def differences(old, new, path=""):
    """The paths at which two records differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old.keys() | new.keys()) for d in differences(old.get(k), new.get(k), f"{path}/{k}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [(path, old, new)]


def count(record):
    if isinstance(record, dict):
        return sum(count(v) for v in record.values())
    if isinstance(record, list):
        return sum(count(v) for v in record)
    return 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=Path, required=True, help="the offline assets (stories260K/, text/, eval/, ...)")
    p.add_argument("--out", type=Path, required=True, help="a new directory for the run and its golden.json")
    p.add_argument("--compare", type=Path, help="an earlier golden.json: list what differs, exit 1 if anything does")
    args = p.parse_args(argv)
    if args.out.exists():
        sys.exit(f"error: --out {args.out} already exists")
    if args.compare and not args.compare.is_file():
        sys.exit(f"error: --compare {args.compare} is not a file")
    args.out.mkdir(parents=True)
    run, t0 = Run(args.out.resolve()), time.perf_counter()
    pipeline(run, args.assets.resolve())
    for record in run.record.values():  # times are not results
        for line in record if isinstance(record, list) else []:
            for key in ("elapsed", "tok_s", "seconds") if isinstance(line, dict) else ():
                line.pop(key, None)
    (args.out / "golden.json").write_text(json.dumps(run.record, indent=1, sort_keys=True) + "\n")
    print(f"{count(run.record)} values in {args.out / 'golden.json'} ({time.perf_counter() - t0:.0f} s)")
    if args.compare:
        diff = differences(json.loads(args.compare.read_text()), run.record)
        for path, old, new in diff[:50]:
            print(f"{path}: {old!r} -> {new!r}"[:300])
        print(f"{len(diff)} of {count(run.record)} values differ from {args.compare}")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
