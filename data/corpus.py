"""Documents from files: the one reader behind data/prepare.py and lab/eval.py.

.txt, .jsonl / .json with a "text" field (or prompt/response pairs), .parquet (pyarrow; FineWeb,
StarCoder) and zstd-compressed .jsonl.zst (zstandard; SlimPajama), or folders of them. Streamed:
a corpus need not fit in memory (a parquet file is read a row group at a time; .json alone is
read whole). A .txt holds documents separated by blank lines (or a recipe's own separator); a
text without blank lines is read one document per line, and a single line in pieces, as nanoGPT
splits a plain text.
"""

import io
import itertools
import json
import re
import sys
from pathlib import Path

from support.cli import UserError

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".jsonl.zst")
PIECE_CHARS = 10_000  # a text that is one long line is cut into documents of this many characters
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def read_text(path, what="file"):
    """A whole file as UTF-8 text (sample.py's --prompt-file); what: the option that named it, for the error."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def natural_key(path):
    """Sort "chunk2/example_train_10" after "chunk2/example_train_9", as the hub's shards are numbered."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(path))]


def files_of(path):
    """The readable files of a file or a folder (recursively, in natural order)."""
    path = Path(path)
    if path.is_dir():
        found = sorted((p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)), key=natural_key)
        if not found:
            raise UserError(f"{path} holds no {', '.join(SUFFIXES)} files")
        return found
    if not path.is_file():
        raise UserError(f"input {path} does not exist")
    if not path.name.endswith(SUFFIXES):
        raise UserError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)} or a folder)")
    return [path]


def parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError for a damaged footer
        raise UserError(f"{path} is not a valid parquet file ({' '.join(str(e).split())})") from None


def check_file(path, field="text"):
    """Fail now, before any work, on a file that cannot be read: empty, damaged, or without the field."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError(f"input {path} is empty")
    if path.name.endswith(".parquet"):
        names = parquet(path).schema_arrow.names
        if field not in names:
            raise UserError(f"{path} has no {field!r} column (it has {', '.join(names)})")
    elif path.name.endswith(".zst"):
        with open(path, "rb") as f:
            if f.read(4) != ZSTD_MAGIC:
                raise UserError(f"{path} is not zstd-compressed")


def records(path, field="text", split=None, skip=0):
    """Yield the records (dicts for JSON, {field: ...} for parquet, {"text": ...} for text) of a file or folder.

    skip: records to pass over first (a parquet file skips whole row groups unread).
    """
    files = files_of(path)
    if len(files) > 1:
        yield from itertools.islice(itertools.chain.from_iterable(records(f, field, split) for f in files), skip, None)
        return
    path = files[0]
    try:
        if path.name.endswith(".parquet"):
            yield from parquet_records(path, field, skip)
        elif path.name.endswith(".zst"):
            yield from itertools.islice(zstd_records(path), skip, None)
        elif path.suffix == ".txt":
            yield from itertools.islice(({"text": doc} for doc in text_documents(path, split)), skip, None)
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                lines = ((n, line) for n, line in enumerate(f, 1) if line.strip())
                for n, line in itertools.islice(lines, skip, None):
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise UserError(f"{path}:{n} is not valid JSON") from None
        else:
            try:
                data = json.loads(read_text(path))
            except ValueError as e:
                raise UserError(f"{path} is not valid JSON: {e}") from None
            yield from (data if isinstance(data, list) else [data])[skip:]
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start} of a block)") from None


def parquet_records(path, field, skip):
    file = parquet(path)
    if field not in file.schema_arrow.names:
        raise UserError(f"{path} has no {field!r} column")
    try:
        for group in range(file.num_row_groups):
            rows = file.metadata.row_group(group).num_rows
            if skip >= rows:
                skip -= rows
                continue
            for batch in file.iter_batches(batch_size=1024, row_groups=[group], columns=[field]):
                column = batch.column(0).to_pylist()
                yield from ({field: t} for t in column[skip:])
                skip = max(0, skip - len(column))
    except (OSError, ValueError) as e:  # pyarrow's errors for damaged pages (ArrowInvalid is a ValueError)
        raise UserError(f"{path} is a damaged parquet file ({' '.join(str(e).split())})") from None


def zstd_records(path):
    try:
        import zstandard
    except ImportError:
        raise UserError(f"reading {path} needs zstandard (pip install zstandard)") from None
    with open(path, "rb") as f:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        try:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise UserError(f"{path}: line {n} is not valid JSON") from None
        except zstandard.ZstdError as e:
            raise UserError(f"{path} is a damaged zstd file ({e})") from None


def text_documents(path, split=None):
    """The documents of a .txt, streamed: cut at `split` or blank lines, else one a line, else in pieces."""
    separator, n_lines = separator_of(path, split)
    if separator is None and n_lines > 1:
        print(f"note: {path} has no blank lines between documents: one document per line", file=sys.stderr)
        with open(path, encoding="utf-8") as f:
            yield from (line.strip() for line in f if line.strip())
    elif separator is None:  # nanoGPT's case: one text, split by characters
        print(f"note: {path} is one line: read as documents of {PIECE_CHARS:,} characters", file=sys.stderr)
        text = path.read_text(encoding="utf-8").strip()
        yield from (text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS))
    else:
        with open(path, encoding="utf-8") as f:
            doc = []
            for line in f:
                if separator:
                    first, *rest = line.split(separator)
                else:  # a blank line ends the document
                    first, rest = (line, []) if line.strip() else ("", [""])
                doc.append(first)
                for piece in rest:
                    if "".join(doc).strip():
                        yield "".join(doc).strip()
                    doc = [piece]
            if "".join(doc).strip():
                yield "".join(doc).strip()


def separator_of(path, split):
    """-> (split if the file holds it, else "" if blank lines cut it into documents, else None; lines read).

    Blank lines are document breaks only if no document they make holds half the text: a title line,
    or a trailing blank line, before a paragraph-per-line file must not make it one document."""
    n_lines, chars, doc, longest = 0, 0, 0, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            n_lines += 1
            if split and split in line:
                return split, n_lines
            chars += len(line)
            doc = 0 if not line.strip() else doc + len(line)
            longest = max(longest, doc)
    return ("" if longest <= chars / 2 else None), n_lines


def text_of(record, field, where):
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise UserError(f"{where} has no {field!r} string field")
    return text


def pair_of(record, where):
    """-> (prompt, response) of a record with prompt/response (or instruction/output, src/trg) fields."""
    for p, r in (("prompt", "response"), ("instruction", "output"), ("src", "trg")):
        if isinstance(record, dict) and isinstance(record.get(p), str) and isinstance(record.get(r), str):
            return record[p], record[r]
    raise UserError(f"{where} has no prompt/response (or instruction/output, src/trg) fields")


def texts(inputs, field="text", split=None):
    for path in inputs:
        for n, record in enumerate(records(path, field, split)):
            yield text_of(record, field, f"{path}: record {n}")


def pairs(inputs):
    for path in inputs:
        for n, record in enumerate(records(path)):
            yield pair_of(record, f"{path}: record {n}")


def read_prompts(path):
    """--prompts -> [(prompt, suffix, line number)]. Told by each line's content, whatever the file's name: a JSON
    object is {"prompt", "suffix"?}, any other line is a prompt as written (in a .jsonl, every line must be JSON)."""
    items = []
    for n, line in enumerate(read_text(path, "--prompts").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if path.suffix == ".jsonl":
                raise UserError(f"{path}:{n} is not a JSON object")
            items.append((line, "", n))
        elif not isinstance(record.get("prompt"), str) or not isinstance(record.get("suffix", ""), str):
            raise UserError(f'{path}:{n} needs a "prompt" string (and a "suffix", if any, that is a string)')
        else:
            items.append((record["prompt"], record.get("suffix", ""), n))
    if not items:
        raise UserError(f"--prompts {path} holds no prompt")
    return items
