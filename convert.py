"""Import GPT-2 / LLaMA / llama2.c / DiffuGPT / DiffuLLaMA weights into a checkpoint directory.

    python convert.py SRC OUT [--tokenizer PATH] [--mask-token new|ID] [--force] [--check]

SRC is a Hugging Face model directory (GPT-2 or LLaMA, including the released DiffuGPT and
DiffuLLaMA), a llama2.c "version 0" .bin file, or a hub id such as gpt2 or
diffusionfamily/diffugpt-s (fetched over HTTPS into a cache; HF_ENDPOINT and HF_TOKEN honoured).

Tensors are streamed one at a time in their source dtype, so a 7B model is held once, not twice.
"""

import argparse
import datetime
import json
import struct
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from checkpoint import check_shapes, from_hf, hf_twin, load_checkpoint, load_torch_file, save_checkpoint
from download import download_model
from model import HelpFormatter, ModelConfig, UserError
from tokenizer import GPT2_FILES, SENTENCEPIECE_FILES

# Mask tokens of the released diffusion checkpoints.
DIFFUGPT_S_MASK, DIFFUGPT_M_MASK = 10541, 50257


# ---------------------------------------------------------------------------------------------
# Reading source tensors, one at a time


def iter_hf_tensors(src):
    """Yield (name, tensor) from a HF directory: safetensors (single or sharded) or pytorch_model*.bin."""
    from safetensors import SafetensorError, safe_open

    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (src / index_name).is_file():
            try:
                files = sorted(set(json.loads((src / index_name).read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise UserError(f"{src / index_name} is not a valid weight index: {e}") from None
            break
        if (src / single).is_file():
            files = [single]
            break
    else:
        raise UserError(f"{src} has no model.safetensors or pytorch_model.bin")
    for name in files:
        path = src / name
        if not path.is_file():
            raise UserError(f"weight shard {path} is missing")
        try:
            if name.endswith(".safetensors"):
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        yield key, f.get_tensor(key)
            else:  # never unpickle arbitrary objects; memory-mapped: not read all at once
                state = load_torch_file(path)
                while state:
                    key = next(iter(state))
                    yield key, state.pop(key)
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
            raise UserError(f"{path} is corrupted or truncated: {str(e).splitlines()[0]}") from None


def meta_to_hf_permute(w, n_heads):
    """Meta's RoPE rotates interleaved pairs (0,1),(2,3)...; HF rotates halves. Permute q/k rows."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def read_llama2c(path):
    """A llama2.c legacy "version 0" export -> (ModelConfig, our state dict)."""
    data = path.read_bytes()
    if len(data) < 28:
        raise UserError(f"{path} is too short to be a llama2.c checkpoint")
    if data[:4] == b"ak42":
        raise UserError(f"{path} is a llama2.c version >= 1 export; only the legacy version 0 format is supported")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", data[:28])
    if min(dim, hidden, n_layers, n_heads, n_kv, seq_len) <= 0 or dim % n_heads:
        raise UserError(f"{path} does not have a valid llama2.c header")
    shared = vocab > 0
    vocab, hd, kv_dim = abs(vocab), dim // n_heads, n_kv * (dim // n_heads)
    shapes = [
        ("tok_emb", (vocab, dim)),
        ("rms_att", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_real", (seq_len, hd // 2)),
        ("freq_imag", (seq_len, hd // 2)),
    ] + ([] if shared else [("wcls", (vocab, dim))])
    numel = sum(torch.Size(s).numel() for _, s in shapes)
    if len(data) != 28 + 4 * numel:
        raise UserError(f"{path} has {len(data)} bytes but its header implies {28 + 4 * numel}: truncated or corrupted")
    flat = torch.frombuffer(bytearray(data[28:]), dtype=torch.float32)
    w, offset = {}, 0
    for name, shape in shapes:
        n = torch.Size(shape).numel()
        w[name] = flat[offset : offset + n].view(shape)
        offset += n
    cfg = ModelConfig(
        arch="llama",
        vocab_size=vocab,
        block_size=seq_len,
        n_layer=n_layers,
        n_head=n_heads,
        n_kv_head=n_kv,
        n_embd=dim,
        ffn_dim=hidden,
        norm_eps=1e-5,
        rope_theta=10000.0,
        tie_embeddings=shared,
    )
    state = {"tok_emb.weight": w["tok_emb"], "norm.weight": w["rms_final"]}
    if not shared:
        state["lm_head.weight"] = w["wcls"]
    for i in range(n_layers):
        q, k = meta_to_hf_permute(w["wq"][i], n_heads), meta_to_hf_permute(w["wk"][i], n_kv)
        state[f"layers.{i}.attn_norm.weight"] = w["rms_att"][i]
        state[f"layers.{i}.attn.wqkv.weight"] = torch.cat([q, k, w["wv"][i]])
        state[f"layers.{i}.attn.wo.weight"] = w["wo"][i]
        state[f"layers.{i}.mlp_norm.weight"] = w["rms_ffn"][i]
        state[f"layers.{i}.mlp.up.weight"] = torch.cat([w["w1"][i], w["w3"][i]])
        state[f"layers.{i}.mlp.down.weight"] = w["w2"][i]
    return cfg, state


# ---------------------------------------------------------------------------------------------
# Hugging Face configs -> ModelConfig


def gpt2_config(hf, vocab_size):
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"unsupported GPT-2 activation {hf['activation_function']!r}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise UserError(
            "unsupported GPT-2 attention variant (scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn)"
        )
    return ModelConfig(
        arch="gpt2",
        vocab_size=vocab_size,
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        ffn_dim=hf.get("n_inner") or 0,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=True,
    )


def llama_config(hf, vocab_size):
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"unsupported RoPE scaling {rope!r}")
    if hf.get("attention_bias") or hf.get("mlp_bias") or hf.get("hidden_act", "silu") != "silu":
        raise UserError("unsupported LLaMA variant (attention_bias, mlp_bias or an activation other than silu)")
    return ModelConfig(
        arch="llama",
        vocab_size=vocab_size,
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or 0,
        n_embd=hf["hidden_size"],
        head_dim=hf.get("head_dim") or 0,
        ffn_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


# ---------------------------------------------------------------------------------------------
# Tokenizer files


def find_tokenizer(path):
    """-> (meta["tokenizer"], {name in checkpoint: source file}) or None if path holds none."""
    path = Path(path)
    if path.is_file():
        return {"type": "sentencepiece", "files": SENTENCEPIECE_FILES}, {"tokenizer.model": path}
    for enc, bpe in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):  # the same data, two names
        if (path / enc).is_file() and (path / bpe).is_file():
            return {"type": "gpt2-bpe", "files": GPT2_FILES}, {"encoder.json": path / enc, "vocab.bpe": path / bpe}
    if (path / "tokenizer.model").is_file():
        return {"type": "sentencepiece", "files": SENTENCEPIECE_FILES}, {"tokenizer.model": path / "tokenizer.model"}
    return None


def tokenizer_size_and_ids(spec, files):
    """(vocabulary size, bos, eos) read from the tokenizer files themselves."""
    if spec["type"] == "gpt2-bpe":
        try:
            encoder = json.loads(Path(files["encoder.json"]).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {files['encoder.json']}: {e}") from None
        eot = encoder.get("<|endoftext|>")
        return len(encoder), eot, eot
    import sentencepiece

    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(files["tokenizer.model"]))
    except (OSError, RuntimeError) as e:
        raise UserError(
            f"cannot load SentencePiece model {files['tokenizer.model']}: {str(e).splitlines()[0]}"
        ) from None
    return sp.get_piece_size(), sp.bos_id(), sp.eos_id()


# ---------------------------------------------------------------------------------------------
# The conversion


def is_hub_id(src):
    parts = src.split("/")
    return len(parts) <= 2 and all(parts) and not src.startswith((".", "~")) and not src.endswith(".bin")


def load_source(src):
    """-> (cfg, state dict in our naming, source description, default objective, released mask id or None)."""
    if src.is_file():
        cfg, state = read_llama2c(src)
        return cfg, state, "llama2c", "ar", None
    if not (src / "config.json").is_file():
        raise UserError(f"{src} has no config.json: not a Hugging Face model directory")
    try:
        hf = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise UserError(f"{src / 'config.json'} is not valid JSON: {e}") from None
    if not isinstance(hf, dict):
        raise UserError(f"{src / 'config.json'} must hold a JSON object, not {type(hf).__name__}")
    kind = hf.get("model_type")
    if kind not in ("gpt2", "llama"):
        raise UserError(f"unsupported model_type {kind!r} in {src / 'config.json'} (supported: gpt2, llama)")
    prefixes = set()  # DiffuGPT is told apart by its key names

    def noting_prefixes(raw):
        for key, t in raw:
            prefixes.add(key.split(".")[0])
            yield key, t

    state = dict(from_hf(kind, noting_prefixes(iter_hf_tensors(src))))
    if kind == "gpt2" and "tok_emb.weight" not in state and "lm_head.weight" in state:
        state["tok_emb.weight"] = state.pop("lm_head.weight")  # a tied pair saved under the head's name only
    if "tok_emb.weight" not in state:
        raise UserError(f"{src} has no token embedding")
    vocab_size = state["tok_emb.weight"].shape[0]
    try:
        cfg = gpt2_config(hf, vocab_size) if kind == "gpt2" else llama_config(hf, vocab_size)
    except KeyError as e:
        raise UserError(f"{src / 'config.json'} lacks {e}") from None
    head = state.get("lm_head.weight")
    if head is not None and cfg.tie_embeddings:
        if head.shape == state["tok_emb.weight"].shape and torch.equal(head, state["tok_emb.weight"]):
            del state["lm_head.weight"]  # a tied head saved twice
        else:
            cfg.tie_embeddings = False
    # DiffuGPT's own layout wraps GPT-2 in denoise_model.*: its mask is 10541 (S) or an added 50257 (M)
    # unless its tokenizer says otherwise (released_mask_id)
    if kind == "gpt2" and "denoise_model" in prefixes:
        return cfg, state, "diffugpt", "diffusion", DIFFUGPT_M_MASK if vocab_size > DIFFUGPT_M_MASK else DIFFUGPT_S_MASK
    return cfg, state, f"hf-{kind}", "ar", None


def released_mask_id(src, spec, files):
    """The mask token a released diffusion checkpoint's tokenizer files declare, as an id; None if none.

    The official code decodes with tokenizer.mask_token_id, so DiffuGPT and DiffuLLaMA (811, "ти")
    ship a "mask_token" in special_tokens_map.json or tokenizer_config.json; stock GPT-2 and LLaMA do not.
    """
    configs = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json", "added_tokens.json"):
        try:
            configs[name] = json.loads((src / name).read_text())
        except (OSError, ValueError):
            configs[name] = {}
    mask = configs["special_tokens_map.json"].get("mask_token") or configs["tokenizer_config.json"].get("mask_token")
    mask = mask.get("content") if isinstance(mask, dict) else mask
    if not isinstance(mask, str):
        return None
    added = dict(configs["added_tokens.json"])
    for i, token in configs["tokenizer_config.json"].get("added_tokens_decoder", {}).items():
        added[token.get("content")] = int(i)
    if mask in added:
        return added[mask]
    if spec["type"] == "gpt2-bpe":
        mask_id = json.loads(Path(files["encoder.json"]).read_text()).get(mask)
    else:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(files["tokenizer.model"]))
        mask_id = sp.piece_to_id(mask) if sp.id_to_piece(sp.piece_to_id(mask)) == mask else None
    if mask_id is None:
        raise UserError(f"{src}: its tokenizer's mask token {mask!r} is not in the vocabulary")
    return mask_id


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


def check_against_transformers(src, kind, out):
    """Run the source in transformers and the conversion in causal mode; print the max abs logit difference.

    A llama2.c file has no transformers counterpart: transformers' LLaMA gets the converted weights,
    which checks the architecture; the tests check the import itself by the real model's greedy story."""
    try:
        import transformers
    except ImportError:
        print("--check skipped: transformers is not installed", file=sys.stderr)
        return
    if kind == "llama2c":  # no HF directory to load: transformers' LLaMA with the converted weights
        ref = hf_twin(load_checkpoint(out)[0])
    elif kind == "diffugpt":  # DiffuGPT's keys wrap a GPT2Model: unwrap them into GPT2LMHeadModel
        from safetensors.torch import load_file

        hf_cfg = transformers.GPT2Config.from_pretrained(src)
        state = {
            k.removeprefix("denoise_model."): v
            for f in sorted(src.glob("*.safetensors"))
            for k, v in load_file(f).items()
        }
        state["wte.weight"] = state.pop("embed_tokens.weight")
        hf_cfg.vocab_size = state["wte.weight"].shape[0]
        ref = transformers.GPT2LMHeadModel(hf_cfg)
        ref.transformer.load_state_dict(state, strict=False)
    else:
        ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ref.eval()
    ours, _ = load_checkpoint(out)
    vocab = ref.config.vocab_size
    idx = torch.randint(0, vocab, (2, min(64, ours.cfg.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ref(idx).logits.float() - ours(idx, attn="causal")[..., :vocab]).abs().max().item()
    print(f"check: max abs logit difference vs transformers = {diff:.3g}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("src", help="HF model directory, llama2.c .bin file, or hub id")
    p.add_argument("out", help="checkpoint directory to write")
    p.add_argument("--tokenizer", help="tokenizer file or directory (needed for llama2.c)")
    p.add_argument(
        "--mask-token",
        default=None,
        help="'new' appends a mask token; an integer reuses that id "
        "(default: new for AR sources, the released id for DiffuGPT / DiffuLLaMA)",
    )
    p.add_argument(
        "--mask-init",
        choices=["mean", "noisy-mean"],
        default="mean",
        help="a new mask token's embedding: the mean of the others, or that plus N(0, 1/d) noise (LLaMA-Factory's)",
    )
    p.add_argument("--objective", choices=["ar", "diffusion"], help="override what the source was trained for")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--check", action="store_true", help="compare logits with transformers after converting")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists (pass --force to overwrite it)")
    if args.mask_token not in (None, "new") and not args.mask_token.isdigit():
        raise UserError(f"--mask-token must be 'new' or a token id, got {args.mask_token!r}")
    return args, out


def main(argv=None):
    args, out = parse_args(argv)
    src = Path(args.src).expanduser()
    hub_id = None
    if not src.exists():
        if not is_hub_id(args.src):
            raise UserError(f"source {args.src} does not exist")
        hub_id, src = args.src, download_model(args.src)
    cfg, state, kind, objective, released_mask = load_source(src)

    if args.tokenizer and not Path(args.tokenizer).exists():
        raise UserError(f"tokenizer {args.tokenizer} does not exist")
    tok = find_tokenizer(args.tokenizer) if args.tokenizer else (None if src.is_file() else find_tokenizer(src))
    if tok is None:
        raise UserError(
            f"no tokenizer found in {args.tokenizer or src} (need encoder.json+vocab.bpe, "
            "vocab.json+merges.txt or tokenizer.model); pass --tokenizer"
        )
    spec, files = tok
    declared = None if src.is_file() else released_mask_id(src, spec, files)
    if declared is not None:  # a released diffusion checkpoint, whatever its directory is called
        objective, released_mask = "diffusion", declared
    label = {"hf-gpt2": "diffugpt", "hf-llama": "diffullama"}.get(kind, kind) if declared is not None else kind
    n_tok, bos, eos = tokenizer_size_and_ids(spec, files)
    if n_tok > cfg.vocab_size:
        raise UserError(
            f"the tokenizer has {n_tok} tokens but the model's vocabulary only {cfg.vocab_size}: wrong tokenizer?"
        )

    check_shapes(state, cfg, args.src)

    choice = args.mask_token or ("new" if released_mask is None else str(released_mask))
    if choice == "new":
        mask_id = add_mask_token(cfg, state, args.mask_init)
    else:
        mask_id = int(choice)
        if not 0 <= mask_id < cfg.vocab_size:
            raise UserError(f"--mask-token {mask_id} is outside the vocabulary (0..{cfg.vocab_size - 1})")

    meta = {
        "model": asdict(cfg),
        "objective": args.objective or objective,
        "mask_token_id": mask_id,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tokenizer": spec,
        "source": {
            "from": hub_id or str(src.resolve()),
            "format": label,
            "mask_token": choice,
            "converted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    }
    save_checkpoint(out, state, meta, tokenizer_from=files, overwrite=args.force)
    print(
        f"wrote {out}: {label}, {cfg.arch}, {sum(t.numel() for t in state.values()) / 1e6:.2f}M params, "
        f"vocab {cfg.vocab_size}, mask token {mask_id}, objective {meta['objective']}",
        file=sys.stderr,
    )
    if args.check:
        check_against_transformers(src, kind, out)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
