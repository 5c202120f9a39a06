"""Downloads over plain HTTPS into a cache, resumable, with a progress bar; no huggingface_hub needed.

convert.py fetches hub models (HF_ENDPOINT and HF_TOKEN honoured), data/prepare.py and lab/miniature.py
fetch corpora and stories260K. The cache is $DIFFU_CACHE, else ~/.cache/diffu. A file whose source
publishes its size and sha256 (the hub's dataset shards) is checked before it enters the cache.
"""

import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from support.cli import UserError
from support.files import atomic_write

# A Hugging Face model's weights: (an index of shards, or a single file), safetensors first
WEIGHT_FILES = [
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
]


def cache_dir():
    return Path(os.environ.get("DIFFU_CACHE", Path.home() / ".cache" / "diffu"))


def download_file(url, target, required=True, token=None, size=None, sha256=None):
    """Fetch url into target with a progress bar, resuming a partial .part file.

    Returns False if the file is absent (404) and not required. token: a bearer token (HF_TOKEN).
    size, sha256: what the source publishes; a .part that does not match is deleted, never cached.
    """
    from tqdm import tqdm

    target = Path(target)
    if target.is_file():
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url)
    if have:
        request.add_header("Range", f"bytes={have}-")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 404 and not required:
            return False
        if e.code == 416 and have:  # the .part is already whole (or wrong: checked like any download)
            check_download(part, url, size, sha256)
            part.rename(target)
            return True
        hint = " (a gated model? set HF_TOKEN)" if e.code in (401, 403) else ""
        raise UserError(f"cannot download {url}: HTTP {e.code}{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"cannot download {url}: {e}") from None
    with response:
        if response.status != 206:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        bar = tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=target.name, file=sys.stderr, disable=None
        )
        with open(part, "ab" if have else "wb") as f, bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    check_download(part, url, size, sha256)
    part.rename(target)
    return True


def check_download(part, url, size, sha256):
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise UserError(f"download of {url} has {got:,} bytes, not the {size:,} its source lists; run again")
    if sha256:
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
        if h.hexdigest() != sha256:
            part.unlink()
            raise UserError(f"download of {url} does not match the sha256 its source lists; run again")


def download_url(url):
    """Fetch url into the cache once (resumable), and return the local path."""
    target = cache_dir() / "data" / url.rsplit("/", 1)[-1]
    download_file(url, target, token=os.environ.get("HF_TOKEN") if "huggingface.co" in url else None)
    return target


def hub_endpoint():
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_dataset_files(repo_id, folder):
    """[{"path", "size", "sha256"}] of a hub dataset's folder, recursively, from the hub's tree API.

    Cached after the first listing, so a rerun needs no network for it.
    """
    cached = cache_dir() / "data" / repo_id.replace("/", "--") / f"files-{folder.replace('/', '--') or 'all'}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    url = f"{hub_endpoint()}/api/datasets/{repo_id}/tree/main/{folder}?recursive=true"
    entries = []
    while url:  # the hub pages long listings: Link: <next>; rel="next"
        request = urllib.request.Request(url)
        if os.environ.get("HF_TOKEN"):
            request.add_header("Authorization", f"Bearer {os.environ['HF_TOKEN']}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                entries += json.loads(response.read())
                link = response.headers.get("Link") or ""
        except urllib.error.HTTPError as e:
            raise UserError(f"cannot list {repo_id}/{folder} at {url}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UserError(f"cannot list {repo_id}/{folder} at {url}: {e}") from None
        url = next((part.split(";")[0].strip(" <>") for part in link.split(",") if 'rel="next"' in part), None)
    files = [
        {"path": e["path"], "size": e["size"], "sha256": (e.get("lfs") or {}).get("oid")}
        for e in entries
        if e.get("type") == "file"
    ]
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, json.dumps(files))
    return files


def download_dataset_file(repo_id, path, size=None, sha256=None):
    """One file of a hub dataset into the cache (once, resumable, checked), -> its local path."""
    target = cache_dir() / "data" / repo_id.replace("/", "--") / path
    url = f"{hub_endpoint()}/datasets/{repo_id}/resolve/main/{path}"
    download_file(url, target, token=os.environ.get("HF_TOKEN"), size=size, sha256=sha256)
    return target


def download_model(repo_id):
    """Fetch the files of a hub model into the cache and return its directory (offline once complete)."""
    endpoint = hub_endpoint()
    cache = cache_dir() / repo_id.replace("/", "--")
    manifest = cache / "downloaded.json"  # written last: the cached copy is complete
    if manifest.is_file():
        done = json.loads(manifest.read_text())
        # a list: written before the tokenizer configs were fetched too; fetch what is missing
        if isinstance(done, dict) and all((cache / f).is_file() for f in done["files"]):
            return cache
    got = []

    def fetch(name, required=True):
        url = f"{endpoint}/{repo_id}/resolve/main/{name}"
        if download_file(url, cache / name, required, os.environ.get("HF_TOKEN")):
            got.append(name)
            return True
        return False

    fetch("config.json")
    for index, single in WEIGHT_FILES:
        if fetch(index, required=False):
            for shard in sorted(set(json.loads((cache / index).read_text())["weight_map"].values())):
                fetch(shard)
            break
        if fetch(single, required=False):
            break
    else:
        raise UserError(f"{repo_id} has neither safetensors nor pytorch_model.bin weights")
    for name in (
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    ):
        fetch(name, required=False)
    manifest.write_text(json.dumps({"files": got}))
    return cache
