"""data/prepare.py at scale: recipes with a token budget against a local hub, the 7:3 token mix, kill and rerun,
shards train.py reads as one, plain text without blank lines, and every bad input refused before any work.

The local hub on 127.0.0.1 serves small shards in the real corpora's formats and layouts: FineWeb's parquet
(sample/100BT/000_00000.parquet, its columns), SlimPajama's train/chunkN/example_train_K.jsonl.zst
({"text", "meta"}), StarCoder's language folders of parquet ("content"), and the tree API that lists them
(paged with a Link header, sizes and LFS sha256s).
"""

import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from conftest import ASSETS, ROOT, assert_user_error, run

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

STORIES = (ASSETS / "text" / "tinystories_val.txt").read_text().split("\n\n")
CODE = [f"def f{i}(x):\n    # {STORIES[900 + i][:80]}\n    return x * {i}\n" for i in range(160)]
PREPARE = "data/prepare.py"


def fineweb_table(docs, first_id):
    n = len(docs)
    return pa.table(
        {
            "text": docs,
            "id": [f"<urn:uuid:{first_id + k:08d}>" for k in range(n)],
            "dump": ["CC-MAIN-2013-20"] * n,
            "url": [f"http://example.com/{first_id + k}" for k in range(n)],
            "date": ["2013-05-18T05:48:54Z"] * n,
            "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2013-20/x.warc.gz"] * n,
            "language": ["en"] * n,
            "language_score": [0.9] * n,
            "token_count": [len(d.split()) for d in docs],
        }
    )


def starcoder_table(docs):
    n = len(docs)
    return pa.table(
        {
            "max_stars_repo_path": ["src/f.py"] * n,
            "max_stars_repo_name": ["someone/repo"] * n,
            "max_stars_count": [3] * n,
            "id": [str(k) for k in range(n)],
            "content": docs,
        }
    )


class Hub:
    """A directory of dataset repos served like huggingface.co: /datasets/R/resolve/main/P and /api/... listings."""

    def __init__(self, root):
        self.root, self.listings = root, {}

    def add(self, repo, path, data):
        target = self.root / "datasets" / repo / "resolve" / "main" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def list(self, repo, folder, page_size=3, sha256=None):
        """The tree API's answer for a folder, paged: files (sizes and LFS sha256s) and a directory entry."""
        base = self.root / "datasets" / repo / "resolve" / "main"
        entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": folder or "x"}]
        for f in sorted((base / folder).rglob("*")):
            if f.is_file():
                data = f.read_bytes()
                sha = (sha256 or {}).get(f.name, hashlib.sha256(data).hexdigest())
                path = str(f.relative_to(base))
                entries.append({"type": "file", "oid": "1" * 40, "size": len(data), "path": path, "lfs": {"oid": sha}})
        random.Random(0).shuffle(entries)  # the reading order must not depend on the listing's
        pages = [entries[k : k + page_size] for k in range(0, len(entries), page_size)]
        self.listings[f"/api/datasets/{repo}/tree/main/{folder}"] = pages

    def handler(self):
        hub = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path not in hub.listings:
                    return super().do_GET()
                pages = hub.listings[url.path]
                page = int(urllib.parse.parse_qs(url.query).get("cursor", ["0"])[0])
                body = json.dumps(pages[page]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if page + 1 < len(pages):
                    host = f"http://127.0.0.1:{self.server.server_port}"
                    self.send_header("Link", f'<{host}{url.path}?recursive=true&cursor={page + 1}>; rel="next"')
                self.end_headers()
                self.wfile.write(body)

        return functools.partial(Handler, directory=str(self.root))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """FineWeb: 6 parquet shards of 60 stories in row groups of 16; SlimPajama: 2 chunks of 2 .jsonl.zst shards;
    StarCoder: python (3 shards) and java (1), plus a GitHub-issues folder the recipe must skip."""
    hub = Hub(tmp_path_factory.mktemp("hub"))
    for k in range(6):
        table = fineweb_table(STORIES[k * 60 : (k + 1) * 60], k * 60)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=16)
        hub.add("HuggingFaceFW/fineweb", f"sample/100BT/{k:03d}_00000.parquet", buffer.getvalue())
    hub.list("HuggingFaceFW/fineweb", "sample/100BT")
    slim = STORIES[400:800]
    for k in range(4):
        lines = [json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}}) for t in slim[k::4]]
        data = zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode())
        hub.add("cerebras/SlimPajama-627B", f"train/chunk{k // 2 + 1}/example_train_{k % 2}.jsonl.zst", data)
    hub.list("cerebras/SlimPajama-627B", "train")
    for folder, n in (("python", 3), ("java", 1), ("github-issues-filtered-structured", 1)):
        for k in range(n):
            buffer = io.BytesIO()
            pq.write_table(starcoder_table(CODE[:40] if folder == "java" else CODE[40 * k + 40 : 40 * k + 80]), buffer)
            hub.add("bigcode/starcoderdata", f"{folder}/train-{k:05d}-of-{n:05d}.parquet", buffer.getvalue())
    hub.list("bigcode/starcoderdata", "")
    with serving(hub):
        yield hub


@contextlib.contextmanager
def serving(hub):
    """The hub on 127.0.0.1 (hub.endpoint) for the duration of the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), hub.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub.endpoint = f"http://127.0.0.1:{server.server_port}"
    try:
        yield
    finally:
        server.shutdown()


def env_for(hub, cache):
    return {"HF_ENDPOINT": hub.endpoint, "DIFFU_CACHE": str(cache)}


def sha256s(folder):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def expected_stream(tok, docs_by_shard, budget, every=20, val_cap=10**7):
    """The spec, written independently: every 20th document held out (until the cap), the rest trained on,
    up to the document that reaches the budget. -> (train tokens, val tokens, shards read)."""
    train, val, n = [], [], 0
    for i, docs in enumerate(docs_by_shard):
        for doc in docs:
            ids = tok.encode_document(doc)
            if n % every == 0 and len(val) < val_cap:
                val += ids
            else:
                train += ids
            n += 1
            if len(train) >= budget:
                return train, val, i + 1
    return train, val, len(docs_by_shard)


def joined(folder, split, sources=None):
    info = json.loads((folder / "meta.json").read_text())
    shards = [s for s in info["shards"][split] if sources is None or s["source"] in sources]
    return np.concatenate([np.fromfile(folder / s["file"], np.dtype(info["dtype"])) for s in shards]).tolist()


def test_budget_reads_the_shards_it_needs(stories_ckpt, hub, tmp_path):
    from tokenizer import load_tokenizer

    tok = load_tokenizer(stories_ckpt)
    budget = 11_000  # about 1.3 of the 6 shards of ~8,000 tokens
    out, cache = tmp_path / "fineweb", tmp_path / "cache"
    proc = run(
        PREPARE, "--tokenizer", stories_ckpt, "--out", out, "--recipe", "fineweb", "--tokens", str(budget),
        "--workers", "2", env=env_for(hub, cache),
    )  # fmt: skip
    docs = [STORIES[k * 60 : (k + 1) * 60] for k in range(6)]
    train, val, n_read = expected_stream(tok, docs, budget)
    assert n_read == 2 and joined(out, "train") == train and joined(out, "val") == val
    info = json.loads((out / "meta.json").read_text())
    assert info["sources"]["fineweb"]["shards_read"] == [
        "sample/100BT/000_00000.parquet",
        "sample/100BT/001_00000.parquet",
    ]
    assert info["budget"] == budget and info["sources"]["fineweb"]["train_tokens"] == len(train)
    cached = sorted(p.name for p in (cache / "data" / "HuggingFaceFW--fineweb").rglob("*.parquet"))
    assert cached == ["000_00000.parquet", "001_00000.parquet"]  # downloaded only what the budget needs
    assert f"fineweb: {budget:,} training tokens from HuggingFaceFW/fineweb/sample/100BT" in proc.stderr
    assert f"fineweb: {len(train):,} train tokens" in proc.stderr
    # a larger budget than the corpus: all of it, and says so
    proc = run(
        PREPARE, "--tokenizer", stories_ckpt, "--out", tmp_path / "all", "--recipe", "fineweb", "--tokens", "1M",
        "--workers", "1", env=env_for(hub, cache),
    )  # fmt: skip
    train, val, n_read = expected_stream(tok, docs, 10**6)
    assert n_read == 6 and joined(tmp_path / "all", "train") == train and "the corpus ran out" in proc.stderr


def test_diffullama_mixes_7_to_3_by_tokens(stories_ckpt, hub, tmp_path):
    from tokenizer import load_tokenizer

    tok = load_tokenizer(stories_ckpt)
    out = tmp_path / "mix"
    proc = run(
        PREPARE, "--tokenizer", stories_ckpt, "--out", out, "--recipe", "diffullama", "--tokens", "20000",
        env=env_for(hub, tmp_path / "cache"),
    )  # fmt: skip
    info = json.loads((out / "meta.json").read_text())
    slim, code = info["sources"]["slimpajama"], info["sources"]["starcoder"]
    longest = lambda docs: max(len(tok.encode_document(d)) for d in docs)
    assert 14_000 <= slim["train_tokens"] < 14_000 + longest(STORIES[400:800])  # 7:3 within one document
    assert 6_000 <= code["train_tokens"] < 6_000 + longest(CODE)
    assert len(joined(out, "train", ["slimpajama"])) == slim["train_tokens"] and slim["budget"] == 14_000
    # StarCoder's languages interleaved in proportion (python has 3 shards, java 1); issues have other columns
    assert code["shards_read"][:3] == [
        "python/train-00000-of-00003.parquet",
        "java/train-00000-of-00001.parquet",
        "python/train-00001-of-00003.parquet",
    ]
    assert not any("issues" in s for s in code["shards_read"])
    share = slim["train_tokens"] / (slim["train_tokens"] + code["train_tokens"])
    assert f"slimpajama: {slim['train_tokens']:,} train tokens of a budget of 14,000, {share:.1%}" in proc.stderr
    assert slim["shards_read"][0] == "train/chunk1/example_train_0.jsonl.zst"


@pytest.mark.slow
def test_kill_twice_then_rerun_is_byte_identical(stories_ckpt, tmp_path):
    """SIGKILL at random moments while tokenizing (after a random number of finished shards), twice; the rerun
    completes the same bytes as an uninterrupted run, which was made with another number of workers."""
    hub = Hub(tmp_path / "hub")  # all of TinyStories in 12 shards: ~300K tokens, ~300 output shards
    for k in range(12):
        buffer = io.BytesIO()
        pq.write_table(fineweb_table(STORIES[k * 280 : (k + 1) * 280], k * 280), buffer, row_group_size=32)
        hub.add("HuggingFaceFW/fineweb", f"sample/100BT/{k:03d}_00000.parquet", buffer.getvalue())
    hub.list("HuggingFaceFW/fineweb", "sample/100BT")
    with serving(hub):
        common = [
            PREPARE,
            "--tokenizer",
            stories_ckpt,
            "--recipe",
            "fineweb",
            "--tokens",
            "250K",
            "--shard-tokens",
            "1000",
        ]
        env = env_for(hub, tmp_path / "cache")
        run(*common, "--out", tmp_path / "whole", "--workers", "1", env=env)
        cut, partial = tmp_path / "cut", tmp_path / "cut.partial"
        cmd = [sys.executable, *map(str, common), "--out", str(cut), "--workers", "2"]
        rng, done = random.Random(), 0
        for _ in range(2):
            target = done + rng.randint(3, 80)
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
            while proc.poll() is None and shards_done(partial) < target:
                time.sleep(0.001)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert not cut.exists() and shards_done(partial) >= target
            done = shards_done(partial)
        proc = run(*common, "--out", cut, "--workers", "2", env=env)
    assert "continuing the unfinished run" in proc.stderr and not partial.exists()
    assert sha256s(cut) == sha256s(tmp_path / "whole") and len(sha256s(cut)) > 200


def shards_done(partial):
    try:
        progress = json.loads((partial / "progress.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(len(s["train"]) + len(s["val"]) for s in progress["sources"].values())


def test_train_on_shards_equals_train_on_one_file(stories_ckpt, tmp_path):
    """The same tokens in 10 shards or in one, and in the single-file layout of earlier versions: same examples,
    same loss curve with the same seed."""
    from data.shards import Data

    text = ASSETS / "text" / "tinystories_val.txt"
    run(PREPARE, "--tokenizer", stories_ckpt, "--out", tmp_path / "many", text, "--shard-tokens", "30000")
    run(PREPARE, "--tokenizer", stories_ckpt, "--out", tmp_path / "one", text)
    assert len(json.loads((tmp_path / "many" / "meta.json").read_text())["shards"]["train"]) >= 9
    old = tmp_path / "old"  # train.bin / val.bin and a meta.json without an index
    old.mkdir()
    for split in ("train", "val"):
        np.array(joined(tmp_path / "many", split), np.uint16).tofile(old / f"{split}.bin")
    meta = json.loads((tmp_path / "one" / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("shards", "sources")}))
    a, b, c = (Data(tmp_path / d, "train", 64) for d in ("many", "one", "old"))
    assert a.n == b.n == c.n and a.size > 0
    across = [int(s) - 32 for s in a.starts[1:-1]]  # windows that run across each boundary between shards
    for i in [0, 1, a.n // 2, a.n - 1, *across]:
        assert a.example(i)[0].tolist() == b.example(i)[0].tolist() == c.example(i)[0].tolist()
    args = ["--init-from", stories_ckpt, "--max-iters", "4", "--eval-interval", "2", "--batch-size", "4",
            "--block-size", "64", "--eval-iters", "2", "--seed", "3"]  # fmt: skip
    curves = []
    for d in ("many", "one"):
        proc = run("train.py", *args, "--data-dir", tmp_path / d, "--out-dir", tmp_path / f"run-{d}")
        curves.append((tmp_path / f"run-{d}" / "metrics.jsonl").read_text())
    assert curves[0] == curves[1] and len(curves[0].splitlines()) == 3
    assert "epochs" not in proc.stderr  # 4 steps of 256 tokens repeat nothing


def test_a_run_that_repeats_its_data_says_so_at_start(stories_ckpt, tmp_path):
    stories = (ASSETS / "text" / "tinystories_val.txt").read_text().split("\n\n")[:12]
    (tmp_path / "small.txt").write_text("\n\n".join(stories))
    run(PREPARE, "--tokenizer", stories_ckpt, "--out", tmp_path / "d", tmp_path / "small.txt", "--val-fraction", "0.2")
    size = json.loads((tmp_path / "d" / "meta.json").read_text())["train_tokens"]
    steps = 5 * size // 64 + 1  # a little over 5 epochs of 2 × 32 tokens a step
    args = ["--init-from", stories_ckpt, "--data-dir", tmp_path / "d", "--batch-size", "2", "--block-size", "32",
            "--eval-iters", "1", "--eval-interval", str(steps), "--max-iters", str(steps)]  # fmt: skip
    proc = run("train.py", *args, "--out-dir", tmp_path / "run")
    note = next(line for line in proc.stderr.splitlines() if "epochs" in line)
    assert f"{steps * 64:,} tokens, {steps * 64 / size:.1f} epochs of the {size:,}" in note and "beyond 4" in note


def test_plain_text_without_blank_lines(stories_ckpt, tmp_path):
    """One paragraph a line (wiki_demo.txt) -> one document a line; a single line -> pieces; never refused."""
    lines = tmp_path / "wiki.txt"
    lines.write_text("".join(s.replace("\n", " ") + "\n" for s in STORIES[:100]))
    proc = run(PREPARE, "--tokenizer", stories_ckpt, "--out", tmp_path / "lines", lines)
    info = json.loads((tmp_path / "lines" / "meta.json").read_text())
    assert info["documents"] == {"train": 95, "val": 5} and "one document per line" in proc.stderr
    one = tmp_path / "one.txt"
    one.write_text(" ".join(s.replace("\n", " ") for s in STORIES[:400]))  # ~300 KB on one line
    proc = run(PREPARE, "--tokenizer", stories_ckpt, "--out", tmp_path / "one", one)
    info = json.loads((tmp_path / "one" / "meta.json").read_text())
    assert info["documents"]["val"] >= 1 and "characters" in proc.stderr
    run(PREPARE, "--tokenizer", stories_ckpt, "--out", tmp_path / "wiki", ASSETS / "text" / "wiki_demo.txt")


@pytest.mark.parametrize("layout", ["title", "trailing blank line"])
def test_stray_blank_lines_do_not_make_one_document(layout):
    """A title and a blank line before a paragraph-per-line file, or a blank line after it: still one a line."""
    import tempfile

    from data.corpus import texts

    paragraphs = [s.replace("\n", " ") for s in STORIES[:50]]
    body = "".join(p + "\n" for p in paragraphs)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "wiki.txt"
        path.write_text("A Title\n\n" + body if layout == "title" else body + "\n")
        docs = list(texts([path]))
    assert docs[-50:] == paragraphs


def test_bad_inputs_one_line_and_nothing_written(stories_ckpt, hub, tmp_path):
    out = tmp_path / "out"
    base = [PREPARE, "--tokenizer", stories_ckpt, "--out", out]
    env = env_for(hub, tmp_path / "cache")
    good = tmp_path / "good.txt"
    good.write_text("\n\n".join(STORIES[:40]))
    cases = [
        ([*base, "--recipe", "nope"], "invalid choice"),
        ([*base, "--recipe", "fineweb", "--tokens", "0"], "--tokens"),
        ([*base, good, "--workers", "-3"], "--workers"),
        ([*base, good, "--workers", "0"], "--workers"),
        ([*base, tmp_path / "missing.txt"], "does not exist"),
    ]
    (tmp_path / "empty.txt").write_text("")
    cases.append(([*base, tmp_path / "empty.txt"], "empty"))
    (tmp_path / "blank.txt").write_text("\n\n")
    cases.append(([*base, tmp_path / "blank.txt"], "no train data"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "000_00000.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    cases.append(([*base, "--recipe", "fineweb", "--source", bad], "not a valid parquet"))
    cases.append(([*base, bad / "000_00000.parquet"], "not a valid parquet"))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    buffer = io.BytesIO()
    pq.write_table(pa.table({"body": ["x"]}), buffer)
    (wrong / "a.parquet").write_bytes(buffer.getvalue())
    cases.append(([*base, "--recipe", "fineweb", "--source", wrong], "no 'text' column"))
    useless = tmp_path / "useless"
    useless.mkdir()
    (useless / "notes.md").write_text("# not a corpus")
    cases.append(([*base, "--recipe", "fineweb", "--source", useless], "holds no"))
    cases.append(([*base, useless], "holds no"))
    cases.append(([*base, "--recipe", "diffullama", "--source", f"fineweb={good}"], "no part 'fineweb'"))
    (tmp_path / "z.jsonl.zst").write_bytes(b"plain text, not zstd")
    cases.append(([*base, tmp_path / "z.jsonl.zst"], "not zstd"))
    for argv, words in cases:
        assert_user_error(run(*argv, check=False, env=env), words)
        assert not out.exists() and not (tmp_path / "out.partial").exists(), argv
    # the hub out of reach: the shard list cannot be had (nothing cached yet)
    down = {"HF_ENDPOINT": "http://127.0.0.1:9", "DIFFU_CACHE": str(tmp_path / "cache2")}
    assert_user_error(run(*base, "--recipe", "fineweb", check=False, env=down), "cannot list")
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    # a shard whose bytes do not match the sha256 the hub lists is never cached
    hub.list("HuggingFaceFW/fineweb", "sample/100BT", sha256={"000_00000.parquet": "f" * 64})
    try:
        cache = tmp_path / "cache3"
        proc = run(*base, "--recipe", "fineweb", "--tokens", "1000", check=False, env=env_for(hub, cache))
        assert_user_error(proc, "sha256")
        assert not list(cache.rglob("*.parquet")) and not out.exists() and not (tmp_path / "out.partial").exists()
    finally:
        hub.list("HuggingFaceFW/fineweb", "sample/100BT")


def test_help_shows_defaults():
    proc = run(PREPARE, "--help")
    assert "(default: 250M)" in proc.stdout and "(default: 10M)" in proc.stdout


def test_presets_see_the_papers_tokens():
    """DiffuGPT: 30B FineWeb tokens; DiffuLLaMA: 65B. Each preset's steps cover its paper's tokens, to one step."""
    for name, paper in [("diffugpt-s", 30e9), ("diffugpt-m", 30e9), ("diffullama-7b", 65e9)]:
        preset = json.loads((ROOT / "config" / f"{name}.json").read_text())
        per_step = preset["batch_size"] * preset["grad_accum"] * preset["block_size"]
        assert 0 <= per_step * preset["max_iters"] - paper < per_step, name
