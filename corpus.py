"""Documents from files: the one reader behind data/prepare.py and eval.py.

.txt (documents separated by blank lines, or a recipe's own separator), .jsonl / .json with a
"text" field (or prompt/response pairs), .parquet (pyarrow) and zstd-compressed .jsonl.zst
(zstandard), or folders of them. Streamed: a corpus need not fit in memory.
"""

import json
import re
from pathlib import Path

from model import UserError

SUFFIXES = (".txt", ".jsonl", ".json")


def read_text(path):
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (undecodable byte at offset {e.start})") from None


def records(path, field="text", split=None):
    """Yield the records (dicts for JSON, {"text": ...} for text) of a file or a folder of files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES + (".parquet", ".zst")))
        if not files:
            raise UserError(f"{path} holds no {', '.join(SUFFIXES)} files")
        for f in files:
            yield from records(f, field, split)
    elif not path.is_file():
        raise UserError(f"input {path} does not exist")
    elif path.name.endswith(".parquet"):  # the hub's datasets (FineWeb, StarCoder); pyarrow only when needed
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=[field], batch_size=1024):
            yield from ({field: t} for t in batch.column(0).to_pylist())
    elif path.name.endswith(".zst"):  # SlimPajama ships zstd-compressed jsonl
        import io

        import zstandard

        with open(path, "rb") as f:
            for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8"):
                yield json.loads(line)
    elif path.suffix == ".txt":
        text = read_text(path)  # a recipe's own separator, else blank lines
        pattern = re.escape(split) if split and split in text else r"\n\s*\n"
        for doc in re.split(pattern, text):
            if doc.strip():
                yield {"text": doc.strip()}
    elif path.suffix == ".jsonl":
        for n, line in enumerate(read_text(path).splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise UserError(f"{path}:{n} is not valid JSON") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        yield from data if isinstance(data, list) else [data]
    else:
        raise UserError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)} or a folder)")


def texts(inputs, field="text", split=None):
    for path in inputs:
        for n, rec in enumerate(records(path, field, split)):
            text = rec.get(field) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{path}: record {n} has no {field!r} string field")
            yield text


def pairs(inputs):
    for path in inputs:
        for n, rec in enumerate(records(path)):
            for p, r in (("prompt", "response"), ("instruction", "output"), ("src", "trg")):
                if isinstance(rec, dict) and isinstance(rec.get(p), str) and isinstance(rec.get(r), str):
                    yield rec[p], rec[r]
                    break
            else:
                raise UserError(f"{path}: record {n} has no prompt/response (or instruction/output, src/trg) fields")
