"""Text -> token shards for train.py: your own files, or the paper's corpora at the paper's scale.

    python data/prepare.py --tokenizer CKPT --out DIR INPUT...                     # your own text
    python data/prepare.py --tokenizer CKPT --out DIR --sft INPUT...               # prompt/response pairs
    python data/prepare.py --tokenizer CKPT --out DIR --recipe NAME [--tokens N]   # a public corpus

INPUT: .txt, .jsonl / .json with a "text" field, .parquet, .jsonl.zst, or folders of them (corpus.py
says how each is read). Each document becomes [BOS] tokens [EOS] (tokens + EOS where BOS and EOS are
the same token, as in GPT-2).

Recipes. fineweb: DiffuGPT's 30B tokens of FineWeb (its sample-100BT; the full dump for a budget
beyond 100B). diffullama: DiffuLLaMA's 65B tokens, SlimPajama and StarCoder's 86 languages at 7:3 by
tokens. Also their parts, and two small corpora. A recipe lists its corpus's shards on the hub and
reads them in order (StarCoder's languages and FineWeb's dumps interleaved by their numbers of shards),
downloading each into the cache when it is reached (once, resumable, size and sha256 checked), until
the document that reaches the budget. --source NAME=DIR reads local copies of the shards instead.

Output: DIR/meta.json (the tokenizer's fingerprint, which train.py checks, tokens per source, and the
index of shards) and DIR/{split}-{source}-{k}.bin, shards of about --shard-tokens, uint16 or uint32
by vocabulary. Validation: every N-th document of each source (N = 1 / --val-fraction, from the
first) until it holds its share of --val-tokens; the same documents whatever --workers or --tokens.

Parallel and resumable: --workers processes tokenize the stream, in order; each shard is written
atomically, and the work stays in DIR.partial until it is complete. Killed at any moment, the same
command continues from the last finished shard; the result is byte-identical to an uninterrupted run.

--sft: records {"prompt", "response"} (also "instruction"/"output", "src"/"trg"), each one row of
--block-size tokens: [BOS] prompt response [EOS], padded with EOS, plus a source mask
({split}_src-*.bin, 1 = prompt token, never noised), as DiffuSeq and the paper's GSM8K finetune.
"""

import argparse
import collections
import json
import multiprocessing
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import read_meta
from data.corpus import SUFFIXES, check_file, files_of, natural_key, pair_of, records, text_of
from data.download import download_dataset_file, download_url, hub_dataset_files
from support.cli import COUNT, HelpFormatter, UserError, checked, progress_bar
from support.files import atomic_write, clear_leftovers, die_with_parent, nested, replace_dir, sole_writer
from tokenizer import fingerprint, load_tokenizer

# The public corpora. A hub corpus names the folders that can be listed, each with the tokens its
# publisher counts in it (the estimate of how many shards a budget needs), and the budget by default.
RECIPES = {
    "fineweb": {
        "hub": "HuggingFaceFW/fineweb",
        "folders": {"sample/100BT": 100e9, "data": 15e12},  # the first that holds the budget is read
        "tokens": 30e9,
    },
    "slimpajama": {"hub": "cerebras/SlimPajama-627B", "folders": {"train": 627e9}, "tokens": 0.7 * 65e9},
    "starcoder": {
        "hub": "bigcode/starcoderdata",
        "folders": {"": 220e9},  # ~250B tokens in all; the code is 783 of its 882 GB
        "skip": (  # issues, commits and notebooks have other columns than the code's "content"
            "git-commits-cleaned",
            "github-issues-filtered-structured",
            "jupyter-scripts-dedup-filtered",
            "jupyter-structured-clean-dedup",
        ),
        "field": "content",
        "tokens": 0.3 * 65e9,
    },
    "diffullama": {"mix": {"slimpajama": 0.7, "starcoder": 0.3}, "tokens": 65e9},  # text and code at 7:3
    "tinystories": {
        "url": "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt",
        "split": "<|endoftext|>",
    },
    "shakespeare": {"url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"},
}
FRACTION = checked(float, lambda v: 0 < v < 1, "in (0, 1)")
CHUNK_CHARS = 1 << 20  # text handed to a worker at a time
SHARD_END = None  # in a document stream: the tokenizer catches up before the next shard is opened (or downloaded)


@dataclass
class Source:
    """One stream of documents: its shards in reading order, where to stop, and its share of validation."""

    name: str
    shards: list  # {"name", and "local" (a path) or "hub" / "url" (downloaded when reached)}
    field: str  # the record's text field ("content" for StarCoder)
    split: str | None  # a .txt's own document separator
    budget: int | None  # training tokens (None: all)
    val_tokens: int


# ---------------------------------------------------------------------------------------------
# Options


def token_count(text):
    """'30B', '500M', '1e9', '12000' -> an int, at least 1 (argparse type)."""
    m = re.fullmatch(r"([0-9.]+(?:e[0-9]+)?)([kmbt]?)", text.strip().lower())
    try:
        count = round(float(m[1]) * 1000 ** " kmbt".index(m[2] or " "))
    except (TypeError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a token count: {text!r} (e.g. 30B, 500M, 1e9)") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return count


def parse_args(argv):
    """-> (args, the tokenizer checkpoint's meta); args.sources maps a recipe part to a local folder."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", type=Path, help=f"files ({', '.join(SUFFIXES)}) or folders of them")
    p.add_argument("--tokenizer", required=True, type=Path, help="a checkpoint directory (its tokenizer is used)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    # what to read
    p.add_argument("--recipe", choices=list(RECIPES), help="a public corpus, downloaded unless --source is given")
    p.add_argument(
        "--tokens",
        type=token_count,
        help="training tokens to prepare, e.g. 30B or 500M; None: the recipe's (the paper's), or all the input",
    )
    p.add_argument(
        "--source",
        action="append",
        default=[],
        help="local shards of the recipe's corpus: DIR, or NAME=DIR for each part of a mix (repeat)",
    )
    p.add_argument("--sft", action="store_true", help="prompt/response pairs with a source mask")
    p.add_argument("--block-size", type=COUNT, default=512, help="row length for --sft")
    # what to write
    p.add_argument("--val-fraction", type=FRACTION, default=0.05, help="every 1/this-th document is held out ...")
    p.add_argument("--val-tokens", type=token_count, default="10M", help="... until validation holds this many")
    p.add_argument("--shard-tokens", type=token_count, default="250M", help="tokens per output shard (about)")
    p.add_argument("--workers", type=COUNT, default=min(8, os.cpu_count() or 1), help="tokenizing processes")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    args.out = args.out.resolve() if args.out.is_symlink() else args.out  # a link: write where it points
    if not args.out.resolve().name or args.out.resolve() == Path.cwd():
        raise UserError(f"--out {args.out} must name a folder to create, not the current one")
    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists (pass --force to overwrite it)")
    if args.out.exists() and not (args.out / "meta.json").is_file():  # --force replaces only prepared data
        raise UserError(f"{args.out} is not a data/prepare.py output: refusing to replace it")
    meta = read_meta(args.tokenizer)
    if bool(args.inputs) == bool(args.recipe):
        raise UserError("give input files or folders, or --recipe, not both or neither")
    if args.sft and args.recipe:
        raise UserError("--sft takes prompt/response files, not a --recipe")
    if args.source and not args.recipe:
        raise UserError("--source gives a recipe's files: it needs --recipe (plain inputs are positional)")
    parts = RECIPES[args.recipe].get("mix", {args.recipe: 1}) if args.recipe else {}
    named = [s.split("=", 1) if "=" in s else (args.recipe, s) for s in args.source]
    args.sources = dict(named)
    if len(args.sources) < len(named):
        raise UserError("--source names the same part twice")
    for name, path in args.sources.items():
        if name not in parts:
            raise UserError(f"--source {name}=...: the recipe {args.recipe} has no part {name!r} ({', '.join(parts)})")
        if not Path(path).exists():
            raise UserError(f"--source {path} does not exist")
    for path in [*args.inputs, *args.sources.values(), args.tokenizer]:  # --force must not replace what it reads
        if Path(path).exists() and nested(path, args.out):
            raise UserError(f"--out {args.out} is {path}, or holds it or lies in it: an input is never the output")
    return args, meta


# ---------------------------------------------------------------------------------------------
# The plan: which shards each source reads, checked before any work


def plan(args):
    """-> [Source]: the input files as one source, or the recipe's parts with their budgets."""
    if not args.recipe:
        shards = [{"name": str(f), "local": f} for path in args.inputs for f in files_of(path)]
        seen = collections.Counter(f["local"].resolve() for f in shards)
        if twice := [str(f) for f, n in seen.items() if n > 1]:  # its documents would be in train and val both
            raise UserError(f"input {twice[0]} is given twice (directly or in a folder): each file once")
        return [Source("sft" if args.sft else "text", shards, "text", None, args.tokens, args.val_tokens)]
    recipe = RECIPES[args.recipe]
    total = args.tokens or recipe.get("tokens")
    sources = []
    for name, weight in recipe.get("mix", {args.recipe: 1}).items():
        part = RECIPES[name]
        budget = round(total * weight) if total else None
        if name in args.sources:
            shards = [{"name": str(f), "local": f} for f in files_of(args.sources[name])]
            where = f"{len(shards)} files in {args.sources[name]}"
        elif "hub" in part:
            shards, where = hub_shards(part, budget)
        else:
            shards, where = [{"name": part["url"], "url": part["url"]}], part["url"]
        tokens = f"{budget:,} training tokens" if budget else "all"
        print(f"{name}: {tokens} from {where}", file=sys.stderr)
        val_tokens = round(args.val_tokens * weight)
        sources.append(Source(name, shards, part.get("field", "text"), part.get("split"), budget, val_tokens))
    return sources


def hub_shards(part, budget):
    """The shards of a hub corpus in reading order, and a line saying how many the budget needs."""
    folder, listed_tokens = next(
        ((f, t) for f, t in part["folders"].items() if budget is None or t >= budget), list(part["folders"].items())[-1]
    )
    below = lambda f: f["path"][len(folder) :].lstrip("/")
    files = [
        f
        for f in hub_dataset_files(part["hub"], folder)
        if f["path"].endswith(SUFFIXES) and below(f).split("/")[0] not in part.get("skip", ())
    ]
    if not files:
        raise UserError(f"the hub lists no {', '.join(SUFFIXES)} files in {part['hub']}/{folder}")
    files = interleaved(files, lambda f: below(f).split("/")[0] if "/" in below(f) else "")
    shards = [{"name": f["path"], "hub": part["hub"], **f} for f in files]
    tokens_per_byte = listed_tokens / sum(f["size"] for f in files)
    needed, estimate = len(files), 0.0
    for k, f in enumerate(files):
        estimate += f["size"] * tokens_per_byte
        if budget and estimate >= budget:
            needed = k + 1
            break
    gigabytes = sum(f["size"] for f in files[:needed]) / 1e9
    return shards, f"{part['hub']}/{folder}: about {needed:,} of its {len(files):,} shards ({gigabytes:,.1f} GB)"


def interleaved(files, group_of):
    """Files in natural order, the groups (dumps, languages) interleaved: a group of n files, one every 1/n."""
    groups = collections.defaultdict(list)
    for f in sorted(files, key=lambda f: natural_key(f["path"])):
        groups[group_of(f)].append(f)
    order = [((k + 0.5) / len(g), natural_key(name), f) for name, g in groups.items() for k, f in enumerate(g)]
    return [f for *_, f in sorted(order, key=lambda o: o[:2])]


def shard_path(shard, field):
    """The local file of a shard, downloading it when it is remote."""
    if "local" in shard:
        return Path(shard["local"])
    if "hub" in shard:
        path = download_dataset_file(shard["hub"], shard["path"], shard["size"], shard["sha256"])
    else:
        path = download_url(shard["url"])
    check_file(path, field)
    return path


def documents(source, sft, start, skip):
    """(shard index, document index in the shard, text or (prompt, response)) from shard `start`, after `skip`;
    SHARD_END after each shard."""
    for i in range(start, len(source.shards)):
        path = shard_path(source.shards[i], source.field)
        for j, record in enumerate(records(path, source.field, source.split, skip), skip):
            where = f"{path}: record {j}"
            yield i, j, pair_of(record, where) if sft else text_of(record, source.field, where)
        yield SHARD_END
        skip = 0


# ---------------------------------------------------------------------------------------------
# Tokenizing, in worker processes


_tok = _dtype = _sft_block = None


def _init_worker(ckpt, dtype, sft_block, lock_fd=None, parent=None):
    global _tok, _dtype, _sft_block
    _tok, _dtype, _sft_block = load_tokenizer(ckpt), dtype, sft_block
    if lock_fd is not None:  # a forked worker's copy of the output lock: the parent's alone must hold it
        os.close(lock_fd)
    if parent is not None:  # a worker of a killed parent stops too
        die_with_parent(parent)


def _encode(items):
    """[(i, j, document)] -> [(i, j, tokens)]; SFT: tokens are (row, source mask), or None when too long."""
    out = []
    for i, j, doc in items:
        if not _sft_block:
            out.append((i, j, np.array(_tok.encode_document(doc), dtype=_dtype)))
            continue
        prompt, response = doc
        src = _tok.encode(prompt, bos=True)
        ids = src + _tok.encode(response) + [_tok.eos_id]
        if len(ids) > _sft_block:
            out.append((i, j, None))
            continue
        row = np.full(_sft_block, _tok.eos_id, dtype=_dtype)
        row[: len(ids)] = ids
        mask = np.zeros(_sft_block, dtype=np.uint8)
        mask[: len(src)] = 1
        out.append((i, j, (row, mask)))
    return out


def chunked(items):
    """Items in lists of about CHUNK_CHARS characters; a chunk ends at SHARD_END, which passes through."""
    chunk, chars = [], 0
    for item in items:
        if item is SHARD_END:
            if chunk:
                yield chunk
            yield SHARD_END
            chunk, chars = [], 0
            continue
        chunk.append(item)
        chars += sum(map(len, item[2])) if isinstance(item[2], tuple) else len(item[2])
        if chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


@contextmanager
def encoder(ckpt, workers, dtype, sft_block, lock=None):
    """-> encode(items): the tokens of each item, in order, tokenized by `workers` processes.

    lock: the output's lock file (sole_writer), which forked workers close; and they stop when their parent
    dies, so that a killed run leaves no worker behind.

    At most two chunks per worker are in flight, so memory stays bounded however large the corpus. At the
    end of a shard all of them are finished first: a budget reached there downloads no further shard.
    """
    if workers == 1:
        _init_worker(ckpt, dtype, sft_block)
        yield lambda items: (r for chunk in chunked(items) if chunk is not SHARD_END for r in _encode(chunk))
        return
    # fork where there is one: the workers start at once, without importing everything again (spawn: ~1 s each)
    fork = "fork" in multiprocessing.get_all_start_methods()
    lock_fd = lock.fileno() if lock and fork else None
    context = multiprocessing.get_context("fork" if fork else "spawn")
    initargs = (str(ckpt), dtype, sft_block, lock_fd, os.getpid())
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:

        def encode(items):
            pending = collections.deque()
            for chunk in chunked(items):
                if chunk is not SHARD_END:
                    pending.append(pool.apply_async(_encode, (chunk,)))
                while len(pending) >= 2 * workers or (chunk is SHARD_END and pending):
                    yield from pending.popleft().get()
            while pending:
                yield from pending.popleft().get()

        yield encode


# ---------------------------------------------------------------------------------------------
# Output: shards written atomically, and the progress a rerun continues from


@dataclass
class OpenShard:
    """A shard being written: its tokens (and SFT source mask) go to .tmp files, renamed when it is complete."""

    name: str
    tokens_file: object
    mask_file: object  # None unless --sft
    tokens: int = 0
    documents: int = 0


class ShardWriter:
    """One source's shards, one open per split at a time; close() finishes them and records them in `state`."""

    def __init__(self, folder, source, state):
        self.folder, self.source, self.state = folder, source, state
        self.open = {}  # split -> OpenShard

    def write(self, split, tokens, mask=None):
        if split not in self.open:
            name = f"{split}-{self.source}-{len(self.state[split]):05d}.bin"
            src = open(self.folder / f"{split}_src{name[len(split) :]}.tmp", "wb") if mask is not None else None
            self.open[split] = OpenShard(name, open(self.folder / f"{name}.tmp", "wb"), src)
        shard = self.open[split]
        shard.tokens_file.write(tokens.tobytes())
        if mask is not None:
            shard.mask_file.write(mask.tobytes())
        shard.tokens += len(tokens)
        shard.documents += 1

    def pending(self, split):
        return self.open[split].tokens if split in self.open else 0

    def close(self):
        for split, shard in self.open.items():
            for handle in filter(None, (shard.tokens_file, shard.mask_file)):
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.replace(handle.name, handle.name.removesuffix(".tmp"))
            self.state[split].append({"file": shard.name, "tokens": shard.tokens, "documents": shard.documents})
            if shard.mask_file:
                self.state[split][-1]["src_file"] = Path(shard.mask_file.name).name.removesuffix(".tmp")
        self.open = {}


def save_progress(folder, progress):
    atomic_write(folder / "progress.json", json.dumps(progress, indent=1))


def prepare_source(source, folder, progress, encode, args):
    """Tokenize one source into its shards, from where the progress record says it stopped."""
    state = progress["sources"].setdefault(
        source.name, {"next": [0, 0], "documents": 0, "skipped": 0, "train": [], "val": [], "done": False}
    )
    if state["done"]:
        return state
    every = max(1, round(1 / args.val_fraction))
    tokens = {split: sum(e["tokens"] for e in state[split]) for split in ("train", "val")}
    writer = ShardWriter(folder, source.name, state)
    bar = progress_bar(total=source.budget, initial=tokens["train"], desc=source.name, unit="tok", unit_scale=True)
    for i, j, item in encode(documents(source, args.sft, *state["next"])):
        state["next"] = [i, j + 1]
        if item is None:  # an SFT pair longer than a row
            state["skipped"] += 1
            continue
        ids, mask = item if args.sft else (item, None)
        split = "val" if state["documents"] % every == 0 and tokens["val"] < source.val_tokens else "train"
        state["documents"] += 1
        writer.write(split, ids, mask)
        tokens[split] += len(ids)
        if split == "train":
            bar.update(len(ids))
        if source.budget and tokens["train"] >= source.budget:
            break
        if writer.pending("train") >= args.shard_tokens:  # a shard is complete: a rerun starts after it
            writer.close()
            save_progress(folder, progress)
    bar.total = bar.n  # finished: the last progress line says so (a log otherwise ends on the first, 0 tokens)
    bar.close()
    writer.close()
    state["done"] = True
    save_progress(folder, progress)
    return state


def start_or_resume(folder, options):
    """The progress of an unfinished run of the same command in `folder`, or a fresh one."""
    record = folder / "progress.json"
    if (folder / "meta.json").is_file() and not record.is_file():  # killed just before the final rename
        if json.loads((folder / "meta.json").read_text()).get("options") != options:
            raise UserError(f"{folder} holds the finished output of another command: rerun that one, or delete it")
        return None
    if record.is_file():
        progress = json.loads(record.read_text())
        if progress["options"] != options:
            raise UserError(
                f"{folder} holds an unfinished run with other options: rerun that command, or delete {folder}"
            )
        finished = sum(len(s["train"]) + len(s["val"]) for s in progress["sources"].values())
        print(f"continuing the unfinished run in {folder} ({finished} shards done)", file=sys.stderr)
        return progress
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return {"options": options, "sources": {}}


def main(argv=None):
    args, meta = parse_args(argv)
    sources = plan(args)
    for source in sources:  # local files fail now, before any work
        for shard in source.shards:
            if "local" in shard:
                check_file(shard["local"], source.field)
    vocab = meta["model"]["vocab_size"]
    dtype = np.dtype(np.uint16 if vocab <= 2**16 else np.uint32)
    options = {  # what decides the output's bytes: a rerun continues only if they are the same
        "tokenizer": fingerprint(args.tokenizer, meta),
        "sources": [[s.name, [x["name"] for x in s.shards], s.field, s.budget, s.val_tokens] for s in sources],
        **{k: getattr(args, k) for k in ("val_fraction", "shard_tokens", "sft", "block_size")},
    }
    with sole_writer(args.out) as lock:  # this process is --out's one writer (and its .partial's)
        folder = args.out.with_name(args.out.name + ".partial")
        progress = start_or_resume(folder, options)
        if progress is None:
            clear_leftovers(args.out)
            replace_dir(folder, args.out)
            return

        # tokenize each source into shards
        try:
            with encoder(args.tokenizer, args.workers, dtype.name, args.block_size if args.sft else 0, lock) as encode:
                for source in sources:
                    prepare_source(source, folder, progress, encode, args)
        except UserError as e:
            states = progress["sources"].values()
            if not any(s["train"] or s["val"] for s in states):
                shutil.rmtree(folder)
                raise
            raise UserError(
                f"{e} (the finished shards stay in {folder}: fix this and rerun the same command)"
            ) from None

        # the index, then the directory becomes --out
        states = {s.name: progress["sources"][s.name] for s in sources}
        totals = {split: sum(e["tokens"] for st in states.values() for e in st[split]) for split in ("train", "val")}
        for split in ("train", "val"):
            if totals[split] == 0:
                shutil.rmtree(folder)
                n_docs, skipped = (sum(st[k] for st in states.values()) for k in ("documents", "skipped"))
                why = f", {skipped} pairs longer than --block-size {args.block_size} skipped" if skipped else ""
                raise UserError(f"no {split} data: the input is empty or too small (got {n_docs} documents{why})")
        info = {
            "tokenizer_fingerprint": options["tokenizer"],
            "tokenizer": meta["tokenizer"]["type"],
            "vocab_size": vocab,
            "dtype": dtype.name,
            "train_tokens": totals["train"],
            "val_tokens": totals["val"],
            "documents": {split: sum(e["documents"] for st in states.values() for e in st[split]) for split in totals},
            "bos_token_id": meta.get("bos_token_id"),
            "eos_token_id": meta["eos_token_id"],
            "sft": args.sft,
            "recipe": args.recipe,
            "options": options,  # what made these bytes (a finished .partial is renamed only for the same command)
            "budget": sum(s.budget for s in sources) if all(s.budget for s in sources) else None,
            "sources": {
                s.name: {
                    "train_tokens": sum(e["tokens"] for e in states[s.name]["train"]),
                    "val_tokens": sum(e["tokens"] for e in states[s.name]["val"]),
                    "budget": s.budget,
                    "shards_read": [x["name"] for x in s.shards[: states[s.name]["next"][0] + 1]],
                }
                for s in sources
            },
            "shards": {
                split: [{**e, "source": name} for name, st in states.items() for e in st[split]] for split in totals
            },
        }
        if args.sft:
            info["block_size"] = args.block_size
        for leftover in [*folder.glob("*.tmp"), *folder.glob(".*.tmp-*")]:
            leftover.unlink()
        atomic_write(folder / "meta.json", json.dumps(info, indent=2) + "\n")
        (folder / "progress.json").unlink()  # after meta.json: a folder with both is continued, with meta alone renamed
        clear_leftovers(args.out)
        replace_dir(folder, args.out)

        skipped = sum(st["skipped"] for st in states.values())
        if skipped:
            print(f"skipped {skipped} pairs longer than --block-size {args.block_size}", file=sys.stderr)
        n_shards = len(info["shards"]["train"]) + len(info["shards"]["val"])
        print(
            f"wrote {args.out}: {totals['train']:,} train and {totals['val']:,} val tokens, "
            f"{n_shards} shards of {dtype}",
            file=sys.stderr,
        )
        for name, s in info["sources"].items():
            share = s["train_tokens"] / totals["train"]
            budget = f" of a budget of {s['budget']:,}" if s["budget"] else ""
            short = " (the corpus ran out)" if s["budget"] and s["train_tokens"] < s["budget"] else ""
            print(
                f"  {name}: {s['train_tokens']:,} train tokens{budget}{short}, {share:.1%} of the total, "
                f"from {len(s['shards_read'])} of {len(next(x for x in sources if x.name == name).shards)} shards",
                file=sys.stderr,
            )


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
