"""Text -> token memmaps for train.py.

    python data/prepare.py --tokenizer CKPT --out DIR INPUT...          # pre-training text
    python data/prepare.py --tokenizer CKPT --out DIR --sft INPUT...    # prompt/response pairs
    python data/prepare.py --tokenizer CKPT --out DIR --recipe NAME [--source [PART=]PATH ...]

INPUT: .txt (documents separated by blank lines), .jsonl / .json with a "text" field, or
folders of them. Each document becomes [BOS] tokens [EOS] (just tokens + EOS where BOS and
EOS are the same token, as in GPT-2). Every N-th document (N = 1 / --val-fraction, starting
with the first) goes to val.bin, the rest to train.bin; a stream, so corpora need not fit
in memory. meta.json records the tokenizer's fingerprint, which train.py checks.

--sft: records {"prompt", "response"} (also "instruction"/"output", "src"/"trg"), each one
row of --block-size tokens: [BOS] prompt response [EOS], padded with EOS, plus a source mask
(train_src.bin, 1 = prompt token, never noised), as DiffuSeq and the paper's GSM8K finetune.

--recipe: the paper's corpora (fineweb for DiffuGPT; diffullama = slimpajama + starcoder at 7:3
by characters) and two small ones (tinystories, shakespeare), downloaded into the cache when
online (.parquet needs pyarrow, .zst needs zstandard); --source gives local copies instead.
"""

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import atomic_dir, read_meta  # noqa: E402
from corpus import pairs, texts  # noqa: E402
from download import download_url  # noqa: E402
from model import HelpFormatter, UserError  # noqa: E402
from tokenizer import fingerprint, load_tokenizer  # noqa: E402

# Public sources of the paper's corpora (and two small ones). Each is downloaded into the cache
# when online; --source PATH points at a local copy instead.
RECIPES = {
    "tinystories": {
        "url": "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt",
        "split": "<|endoftext|>",
    },
    "shakespeare": {"url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"},
    "fineweb": {
        "url": "https://huggingface.co/datasets/HuggingFaceFW/fineweb/resolve/main/sample/10BT/000_00000.parquet"
    },
    "slimpajama": {
        "url": "https://huggingface.co/datasets/cerebras/SlimPajama-627B/resolve/main/train/chunk1/example_train_0.jsonl.zst"
    },
    "starcoder": {
        "url": "https://huggingface.co/datasets/bigcode/starcoderdata/resolve/main/python/train-00000-of-00059.parquet",
        "field": "content",
    },
    "diffullama": {"mix": {"slimpajama": 0.7, "starcoder": 0.3}},  # DiffuLLaMA's corpus: text and code at 7:3
}


def mixed(streams, weights):
    """Interleave document streams so each one's share of the characters follows its weight; stop when one runs out."""
    used = [0] * len(streams)
    while True:
        i = min(range(len(streams)), key=lambda k: used[k] / weights[k])
        doc = next(streams[i], None)
        if doc is None:
            return
        used[i] += len(doc)
        yield doc


def recipe_texts(name, sources):
    """The documents of a recipe; sources maps a recipe name to a local copy (else it is downloaded)."""
    recipe = RECIPES[name]
    if "mix" in recipe:
        parts = list(recipe["mix"].items())
        return mixed([iter(recipe_texts(part, sources)) for part, _ in parts], [w for _, w in parts])
    path = sources.get(name) or download_url(recipe["url"])
    return texts([path], recipe.get("field", "text"), recipe.get("split"))


_tok = None


def _init_worker(ckpt):
    global _tok
    _tok = load_tokenizer(ckpt)


def _encode_document(text):
    return np.array(_tok.encode_document(text), dtype=np.int64)


def _encode_pair(pair):
    prompt, response = pair
    src = _tok.encode(prompt, bos=True)
    return np.array(src + _tok.encode(response) + [_tok.eos_id], dtype=np.int64), len(src)


def encoded(items, fn, ckpt, workers):
    """Encode items in order, in worker processes when there are several."""
    if workers <= 1:
        _init_worker(ckpt)
        yield from map(fn, items)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(ckpt),)) as pool:
        yield from pool.imap(fn, items, chunksize=64)


def parse_args(argv):
    """-> (args, the tokenizer checkpoint's meta, {recipe part: local copy})."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", type=Path, help=".txt / .jsonl / .json files or folders")
    p.add_argument("--tokenizer", required=True, type=Path, help="a checkpoint directory (its tokenizer is used)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out for val.bin")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="tokenizing processes")
    p.add_argument("--sft", action="store_true", help="prompt/response pairs with a source mask")
    p.add_argument("--block-size", type=int, default=512, help="row length for --sft")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a public corpus, downloaded unless --source is given")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        help="local copy of the recipe's corpus: PATH, or NAME=PATH for each part of a mix",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists (pass --force to overwrite it)")
    meta = read_meta(args.tokenizer)
    if bool(args.inputs) == bool(args.recipe):
        raise UserError("give input files or folders, or --recipe, not both or neither")
    if args.sft and args.recipe:
        raise UserError("--sft takes prompt/response files, not a --recipe")
    sources = dict(s.split("=", 1) if "=" in s else (args.recipe, s) for s in args.source)
    for name, path in sources.items():
        if name not in RECIPES:
            raise UserError(f"--source {name}=...: unknown recipe part {name!r}")
        if not Path(path).exists():
            raise UserError(f"--source {path} does not exist")
    return args, meta, sources


def main(argv=None):
    args, meta, sources = parse_args(argv)
    vocab = meta["model"]["vocab_size"]
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    every = max(1, round(1 / args.val_fraction))
    counts = {"train": [0, 0], "val": [0, 0]}  # documents, tokens

    with atomic_dir(args.out, overwrite=args.force) as tmp:
        files = {s: open(tmp / f"{s}.bin", "wb") for s in counts}
        src_files = {s: open(tmp / f"{s}_src.bin", "wb") for s in counts} if args.sft else {}
        skipped = 0
        if args.sft:
            items, fn = pairs(args.inputs), _encode_pair
        else:
            items, fn = recipe_texts(args.recipe, sources) if args.recipe else texts(args.inputs), _encode_document
        bar = tqdm(
            encoded(items, fn, args.tokenizer, args.workers),
            desc="tokenizing",
            unit="doc",
            file=sys.stderr,
            disable=None,
        )
        for i, item in enumerate(bar):
            split_name = "val" if i % every == 0 else "train"
            ids = item
            if args.sft:
                ids, n_src = item
                if len(ids) > args.block_size:
                    skipped += 1
                    continue
                src = np.zeros(args.block_size, dtype=np.uint8)
                src[:n_src] = 1
                ids = np.concatenate([ids, np.full(args.block_size - len(ids), meta["eos_token_id"])])
                src_files[split_name].write(src.tobytes())
            files[split_name].write(ids.astype(dtype).tobytes())
            counts[split_name][0] += 1
            counts[split_name][1] += len(ids)
        for f in [*files.values(), *src_files.values()]:
            f.close()
        for s in ("train", "val"):
            if counts[s][1] == 0:
                n_docs = sum(c[0] for c in counts.values())
                raise UserError(f"no {s} data: the input is empty or too small (got {n_docs} documents)")
        if skipped:
            print(f"skipped {skipped} pairs longer than --block-size {args.block_size}", file=sys.stderr)
        info = {
            "tokenizer_fingerprint": fingerprint(args.tokenizer, meta),
            "tokenizer": meta["tokenizer"]["type"],
            "vocab_size": vocab,
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"][1],
            "val_tokens": counts["val"][1],
            "documents": {s: c[0] for s, c in counts.items()},
            "bos_token_id": meta.get("bos_token_id"),
            "eos_token_id": meta["eos_token_id"],
            "sft": args.sft,
            "sources": [str(x) for x in args.inputs] or [args.recipe],
        }
        if args.sft:
            info["block_size"] = args.block_size
        (tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"wrote {args.out}: {info['train_tokens']:,} train and {info['val_tokens']:,} val tokens ({info['dtype']})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
