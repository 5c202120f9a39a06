"""Import GPT-2 / LLaMA / llama2.c / DiffuGPT / DiffuLLaMA weights into a checkpoint directory, or export one.

    python convert.py SRC OUT [--tokenizer PATH] [--mask-token new|ID] [--force] [--check]
    python convert.py CKPT OUT --to hf [--shard-size 5GB] [--force] [--check]

SRC is a Hugging Face model directory (GPT-2, LLaMA including LLaMA-3, Qwen2 / Qwen2.5, and the released
DiffuGPT and DiffuLLaMA), a llama.cpp GGUF file (LLaMA architecture: SmolLM2, LLaMA; weights dequantized),
a llama2.c "version 0" .bin file, or a hub id such as gpt2 or diffusionfamily/diffugpt-s (fetched over
HTTPS into a cache; HF_ENDPOINT and HF_TOKEN honoured).

The steps: find the source (a hub id is fetched first); read it in our names (formats/hf.py, formats/gguf.py,
formats/llama2c.py: tensors are streamed one at a time in their source dtype, so a 7B model is held once, not
twice); find its tokenizer; add the mask token, or take the one a release declares; save the checkpoint; with
--check, compare its logits with transformers'. --to hf writes the checkpoint CKPT the other way, as a Hugging Face
directory that transformers loads (formats/hf.py write_hf), with the diffusion facts in its config.json.
"""

import argparse
import datetime
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from checkpoint import check_shapes, save_checkpoint
from data.download import download_model
from formats.gguf import read_gguf
from formats.hf import SHARD_SIZE, check_against_transformers, read_hf, released_mask_id, write_hf
from formats.llama2c import read_llama2c
from model import ModelConfig
from support.cli import HelpFormatter, UserError, byte_size
from support.files import nested, sole_writer
from tokenizer import find_tokenizer, read_vocabulary


@dataclass
class Source:
    """A model read from disk, in our names."""

    cfg: ModelConfig
    state: dict  # our name -> tensor
    kind: str  # "llama2c", "gguf", "hf-gpt2", "hf-llama", "diffugpt" or "hf-export" (our --to hf's)
    objective: str  # what it was trained for: "ar" or "diffusion"
    mask_id: int | None  # a released diffusion checkpoint's mask token
    facts: dict  # config.json's optional facts an export of ours carries: shift, diffusion_block, ar_weight
    tokenizer: tuple | None = None  # find_tokenizer's answer for a tokenizer inside the source file (GGUF)


def magic(path):
    """A file's first four bytes: what it is, whatever its name."""
    with open(path, "rb") as f:
        return f.read(4)


def load_source(src, scratch):
    """A llama2.c or GGUF file, or a Hugging Face directory -> Source (scratch: a folder for files it makes)."""
    if src.is_file() and (magic(src) == b"GGUF" or src.suffix.lower() == ".gguf"):  # its name, if not its bytes
        cfg, state, tokenizer = read_gguf(src, scratch)
        return Source(cfg, state, "gguf", "ar", None, {}, tokenizer)
    if src.is_file():
        return Source(*read_llama2c(src), "llama2c", "ar", None, {})
    return Source(*read_hf(src))


def add_mask_token(cfg, state, init="mean"):
    """Append one token whose embedding (and untied head row) is the mean of the existing rows; init
    "noisy-mean": plus N(0, 1/d) noise, seeded (LLaMA-Factory's noisy mean, which the official code ran on)."""
    g = torch.Generator().manual_seed(0)
    for key in ("tok_emb.weight",) + (() if cfg.tie_embeddings else ("lm_head.weight",)):
        w = state[key]
        row = w.float().mean(0, keepdim=True)
        if init == "noisy-mean":
            row += torch.randn(row.shape, generator=g) / w.shape[1] ** 0.5
        state[key] = torch.cat([w, row.to(w.dtype)])
    cfg.vocab_size += 1
    return cfg.vocab_size - 1


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    a("src", help="HF model directory, llama2.c .bin file, or hub id")
    a("out", help="checkpoint directory to write")
    a("--tokenizer", help="tokenizer file or directory (needed for llama2.c)")
    a("--mask-token", help="'new' appends one, an integer reuses that id (default: new, or the released id)")
    a(
        "--mask-init",
        choices=["mean", "noisy-mean"],
        default="mean",
        help="a new mask's embedding: mean, or + N(0, 1/d)",
    )
    a("--objective", choices=["ar", "diffusion"], help="override what the source was trained for")
    a("--force", action="store_true", help="overwrite OUT if it exists")
    a("--check", action="store_true", help="compare logits with transformers after converting")
    a("--to", choices=["checkpoint", "hf"], default="checkpoint", help="hf: export the checkpoint SRC for transformers")
    a("--shard-size", type=byte_size, help="--to hf: weight files of at most this size, as 5GB (default: 5GB)")
    args = p.parse_args(argv)
    if args.to == "hf" and (args.tokenizer or args.mask_token or args.objective or args.mask_init != "mean"):
        raise UserError("--tokenizer, --mask-token, --mask-init and --objective import a model, not --to hf")
    if args.shard_size and args.to != "hf":
        raise UserError("--shard-size is for --to hf")
    out = Path(args.out)
    if Path(args.src).exists() and nested(args.src, out):  # --force would replace the source with its conversion
        raise UserError(f"{out} is the source {args.src}, or holds it or lies in it: write the checkpoint elsewhere")
    if out.exists() and args.force and not (out / "config.json").is_file():
        raise UserError(f"{out} is not a checkpoint directory: refusing to replace it")
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists (pass --force to overwrite it)")
    if args.mask_token not in (None, "new") and not args.mask_token.isdigit():
        raise UserError(f"--mask-token must be 'new' or a token id, got {args.mask_token!r}")
    return args, out


def main(argv=None):
    args, out = parse_args(argv)
    if args.to == "hf":  # the other way: our checkpoint as a Hugging Face directory
        with sole_writer(out):
            summary = write_hf(Path(args.src), out, args.shard_size or SHARD_SIZE, args.force)
        print(f"wrote {out}: {summary}", file=sys.stderr)
        if args.check:
            check_against_transformers(out, "hf-export", Path(args.src))
        return
    with sole_writer(out), tempfile.TemporaryDirectory() as scratch:  # this process is OUT's one writer
        src = Path(args.src).expanduser()
        hub_id = None
        if not src.exists():
            parts = args.src.split("/")  # a hub id: "gpt2" or "org/name"
            if len(parts) > 2 or not all(parts) or args.src.startswith((".", "~")) or args.src.endswith(".bin"):
                raise UserError(f"source {args.src} does not exist")
            hub_id, src = args.src, download_model(args.src)
        source = load_source(src, Path(scratch))
        cfg, state = source.cfg, source.state

        if args.tokenizer and not Path(args.tokenizer).exists():
            raise UserError(f"tokenizer {args.tokenizer} does not exist")
        gpt2 = cfg.arch == "gpt2"
        tok = find_tokenizer(args.tokenizer or src, gpt2) if args.tokenizer or not src.is_file() else source.tokenizer
        if tok is None:
            need = "tokenizer.json, encoder.json + vocab.bpe, vocab.json + merges.txt or tokenizer.model"
            raise UserError(f"no tokenizer found in {args.tokenizer or src} (need {need}); pass --tokenizer")
        spec, files = tok
        n_tok, bos, eos, id_of = read_vocabulary(spec, files)
        declared = None if src.is_file() or source.kind == "hf-export" else released_mask_id(src, id_of)
        label = source.kind
        if declared is not None:  # a released diffusion checkpoint, whatever its directory is called
            source.objective, source.mask_id = "diffusion", declared
            label = {"hf-gpt2": "diffugpt", "hf-llama": "diffullama"}.get(source.kind, source.kind)
        if n_tok > cfg.vocab_size:
            raise UserError(
                f"the tokenizer has {n_tok} tokens but the model's vocabulary only {cfg.vocab_size}: wrong tokenizer?"
            )
        check_shapes(state, cfg, args.src)

        choice = args.mask_token or ("new" if source.mask_id is None else str(source.mask_id))
        if choice == "new":
            mask_id = add_mask_token(cfg, state, args.mask_init)
        else:
            mask_id = int(choice)
            if not 0 <= mask_id < cfg.vocab_size:
                raise UserError(f"--mask-token {mask_id} is outside the vocabulary (0..{cfg.vocab_size - 1})")
            if args.mask_token and mask_id in (bos, eos) and not args.force:  # your choice, not a release's
                raise UserError(f"--mask-token {mask_id} is the tokenizer's BOS or EOS (pass --force if you mean it)")

        meta = {
            "model": asdict(cfg),
            "objective": args.objective or source.objective,
            "mask_token_id": mask_id,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "tokenizer": spec,
            **(source.facts if args.objective in (None, source.objective) else {}),  # an export's, unless overridden
            "source": {
                "from": hub_id or str(src.resolve()),
                "format": label,
                "mask_token": choice,
                "converted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            },
        }
        save_checkpoint(out, state, meta, tokenizer_from=files, overwrite=args.force)
        params = sum(t.numel() for t in state.values()) / 1e6
        print(
            f"wrote {out}: {label}, {cfg.arch}, {params:.2f}M params, vocab {cfg.vocab_size}, mask token {mask_id}, "
            f"objective {meta['objective']}",
            file=sys.stderr,
        )
        if args.check:
            check_against_transformers(src, source.kind, out)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
