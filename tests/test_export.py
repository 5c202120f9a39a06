"""convert.py --to hf: our checkpoints as Hugging Face directories, loaded by transformers with no remote code.

Against what we did not write: transformers' logits (causal, under a full 4-D attention mask: the diffusion mode,
and under block diffusion's mask), AutoTokenizer on the real GPT-2, LLaMA-2, stories260K and SmolLM2 tokenizers,
shards, and the way back (convert.py OUT CKPT), which gives the checkpoint again.
"""

import json
import shutil

import pytest
import torch
from test_families import TEXTS, tiny_family, tiny_llama_with

from checkpoint import load_checkpoint
from conftest import ASSETS, STORIES_BIN, STORIES_TOK, assert_user_error, run
from model import block_attention
from test_convert import tiny_gpt2, tiny_llama
from tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

FACT_KEYS = ("model", "objective", "mask_token_id", "bos_token_id", "eos_token_id", "tokenizer")
FACT_KEYS += ("shift", "diffusion_block", "ar_weight")


def edit_meta(ckpt, **facts):
    meta = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(meta | facts))


def smollm2_tokenizer(directory):
    """The real SmolLM2 tokenizer.json, as convert.py makes it from the GGUF file's metadata (no weights read)."""
    gguf = pytest.importorskip("gguf")
    from formats.gguf import gguf_tokenizer

    reader = gguf.GGUFReader(ASSETS / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    field = lambda key, default=None: reader.fields[key].contents() if key in reader.fields else default
    directory.mkdir(parents=True)
    gguf_tokenizer(reader, field, directory)
    return len(field("tokenizer.ggml.tokens"))


def make_checkpoint(name, d):
    """A checkpoint of each kind the export meets, converted as a user converts: tiny random models saved by
    transformers, or the real stories260K, with the real tokenizers."""
    hf, ckpt = d / "hf", d / "ckpt"
    if name in ("gpt2", "gpt2-reused-mask"):  # GPT-2 BPE; a new mask 50257 or DiffuGPT-S's reused 10541
        tiny_gpt2(hf)
        run("convert.py", hf, ckpt, *(["--mask-token", "10541"] if name == "gpt2-reused-mask" else []))
    elif name == "llama":  # GQA, untied, the real LLaMA-2 tokenizer.model
        tiny_llama(hf)
        run("convert.py", hf, ckpt)
    elif name == "qwen2":  # q, k, v biases, tied; a tokenizer.json three ids short of the model's vocabulary
        tiny_family(hf, "qwen2", tied=True)
        run("convert.py", hf, ckpt)
    elif name == "llama3":  # LLaMA-3.1's RoPE scaling; its tokenizer.json rules (BOS put first), three ids short
        tiny_family(hf, "llama3")
        run("convert.py", hf, ckpt)
    elif name == "smollm2":  # the real SmolLM2 tokenizer.json
        tiny_llama_with(hf, smollm2_tokenizer(hf))
        run("convert.py", hf, ckpt)
    elif name == "stories260K":  # the real model and its SentencePiece tok512, which trims and squeezes spaces
        run("convert.py", STORIES_BIN, ckpt, "--tokenizer", STORIES_TOK)
    else:  # block diffusion with the AR mode kept, on the real stories260K; a reused mask id (DiffuLLaMA's way)
        run("convert.py", STORIES_BIN, ckpt, "--tokenizer", STORIES_TOK, "--mask-token", "300")
        edit_meta(ckpt, objective="diffusion", shift=True, diffusion_block=4, ar_weight=0.5)
    return ckpt


MODELS = ["gpt2", "llama", "qwen2", "llama3", "blocks"]  # GPT-2; LLaMA: GQA, Qwen2's biases, LLaMA-3.1's RoPE
TOKENIZERS = ["gpt2", "gpt2-reused-mask", "llama", "qwen2", "llama3", "smollm2", "stories260K", "blocks"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (checkpoint, its export), each made once for the module."""
    made = {}

    def get(kind):
        if kind not in made:
            d = tmp_path_factory.mktemp(kind)
            run("convert.py", make_checkpoint(kind, d), d / "export", "--to", "hf")
            made[kind] = d / "ckpt", d / "export"
        return made[kind]

    return get


@pytest.mark.parametrize("kind", MODELS)
def test_transformers_logits_equal_ours_causal_and_bidirectional(exported, kind):
    """AutoModelForCausalLM loads the export (no remote code); its logits are ours in fp64, causal and under a full
    4-D attention mask (our attn="full", the diffusion mode), which really is bidirectional: the logits differ."""
    ckpt, export = exported(kind)
    ours, meta = load_checkpoint(ckpt, dtype=torch.float64)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float64).eval()
    arch = {"gpt2": "GPT2LMHeadModel", "qwen2": "Qwen2ForCausalLM"}.get(kind, "LlamaForCausalLM")
    assert type(theirs).__name__ == arch and (kind != "llama3" or theirs.config.rope_parameters["factor"] == 8.0)
    B, L = 2, 24
    idx = torch.randint(0, ours.cfg.vocab_size, (B, L), generator=torch.Generator().manual_seed(0))
    idx[:, ::3] = meta["mask_token_id"]
    full = torch.ones(B, 1, L, L, dtype=torch.bool)  # True: may attend (SDPA, transformers' default)
    with torch.no_grad():
        causal, bidirectional = theirs(idx).logits, theirs(idx, attention_mask=full).logits
        assert (causal - ours(idx, attn="causal")).abs().max() < 1e-5
        assert (bidirectional - ours(idx, attn="full")).abs().max() < 1e-5
        assert (bidirectional - causal).abs().max() > 1e-2
        eager = transformers.AutoModelForCausalLM.from_pretrained(
            export, dtype=torch.float64, attn_implementation="eager"
        )
        additive = torch.zeros(B, 1, L, L, dtype=torch.float64)  # 0: may attend (an additive mask, any attention)
        assert (eager.eval()(idx, attention_mask=additive).logits - bidirectional).abs().max() < 1e-5


def test_block_diffusion_runs_in_transformers(exported):
    """A block-diffusion checkpoint's training pass over [x_t ; x_0] (both halves at positions 0..L-1, under
    block_attention's mask): transformers gives our logits from the 4-D mask and position_ids."""
    ckpt, export = exported("blocks")
    ours, meta = load_checkpoint(ckpt, dtype=torch.float64)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float64).eval()
    assert theirs.config.diffusion == {"objective": "diffusion", "shift": True, "diffusion_block": 4, "ar_weight": 0.5}
    B, L = 2, 16
    x0 = torch.randint(0, 512, (B, L), generator=torch.Generator().manual_seed(0))
    xt = torch.where(torch.rand(B, L, generator=torch.Generator().manual_seed(1)) < 0.5, meta["mask_token_id"], x0)
    mask = block_attention("full", L, meta["diffusion_block"], "cpu", ar=meta["ar_weight"] > 0)  # (2L, 2L)
    positions = torch.arange(L).repeat(2)
    with torch.no_grad():
        mine = ours(torch.cat([xt, x0], 1), attn=mask, positions=positions)
        hf = theirs(
            torch.cat([xt, x0], 1), attention_mask=mask.expand(B, 1, 2 * L, 2 * L), position_ids=positions[None]
        )
        assert (hf.logits - mine).abs().max() < 1e-5


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_autotokenizer_reads_the_export_as_ours(exported, kind):
    """AutoTokenizer encodes as our tokenizer, names the mask token (a new one, or a reused id's own token), BOS and
    EOS, and, with its default special tokens, puts BOS first where we do (a document as stored, less its EOS)."""
    ckpt, export = exported(kind)
    tok, meta = load_tokenizer(ckpt), json.loads((ckpt / "config.json").read_text())
    hf = transformers.AutoTokenizer.from_pretrained(export)
    assert hf.mask_token_id == hf.convert_tokens_to_ids(hf.mask_token) == meta["mask_token_id"]
    assert hf.mask_token == (
        "------------" if kind == "gpt2-reused-mask" else "▁ha" if kind == "blocks" else "<|mask|>"
    )
    assert (hf.bos_token_id, hf.eos_token_id) == (meta["bos_token_id"], meta["eos_token_id"])
    assert hf.unk_token == "<unk>" or meta["tokenizer"]["type"] != "sentencepiece"
    if kind == "gpt2-reused-mask":  # the limit of a reused id: its own text is the mask to AutoTokenizer, not to us
        assert hf.encode("------------", add_special_tokens=False) == [10541] != tok.encode("------------")
    stories = (ASSETS / "text" / "tinystories_val.txt").read_text()[:5000]
    wiki = (ASSETS / "text" / "wiki_demo.txt").read_text()[:5000]
    respelled = lambda ids: [j for i in ids for j in (tok.mask_spelling if i == tok.mask_id else [i])]
    for text in [*TEXTS, stories, wiki, " leading", "trailing  ", "a  b \n  c", "\n\nx\ty", "Hello world"]:
        ids = tok.encode(text)  # a reused mask id is never produced by our encode: its text is spelled otherwise
        assert respelled(hf.encode(text, add_special_tokens=False, split_special_tokens=True)) == ids, text[:40]
        assert respelled(hf.encode(text, split_special_tokens=True)) == tok.encode_document(text)[:-1]
        assert hf.decode(ids) == tok.decode(ids)


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_the_way_back_gives_the_checkpoint_again(exported, kind, tmp_path):
    """convert.py EXPORT BACK: every tensor equal, the facts restored from the export's config.json, the same
    tokenizer files."""
    from safetensors.torch import load_file

    ckpt, export = exported(kind)
    run("convert.py", export, tmp_path / "back")
    before, after = load_file(ckpt / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    meta, back = (json.loads((c / "config.json").read_text()) for c in (ckpt, tmp_path / "back"))
    assert {k: meta[k] for k in FACT_KEYS if k in meta} == {k: back[k] for k in FACT_KEYS if k in back}
    assert back["source"]["format"] == "hf-export"
    for name in meta["tokenizer"]["files"]:
        assert (ckpt / name).read_bytes() == (tmp_path / "back" / name).read_bytes()


def test_a_bf16_checkpoint_exports_in_bf16_and_comes_back_bit_for_bit(tmp_path, stories_ckpt):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "bf16"
    shutil.copytree(stories_ckpt, ckpt)
    save_file({k: v.bfloat16() for k, v in load_file(ckpt / "model.safetensors").items()}, ckpt / "model.safetensors")
    run("convert.py", ckpt, tmp_path / "export", "--to", "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert theirs.dtype == torch.bfloat16
    run("convert.py", tmp_path / "export", tmp_path / "back")
    before, after = load_file(ckpt / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert all(after[k].dtype == torch.bfloat16 and torch.equal(before[k], after[k]) for k in before)


def test_shards_load_in_transformers_and_come_back(tmp_path, stories_ckpt):
    """--shard-size: HF's model-0000K-of-0000N.safetensors and its index, each file within the size unless one tensor
    is larger (stories260K's embedding: 131 KB); loaded by transformers with our logits, and back again."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    export = tmp_path / "export"
    run("convert.py", stories_ckpt, export, "--to", "hf", "--shard-size", "100KB")
    index = json.loads((export / "model.safetensors.index.json").read_text())
    files = sorted({*index["weight_map"].values()})
    assert len(files) >= 8 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in export.glob("model*.safetensors")) == files
    for file in files:
        with safe_open(export / file, framework="pt") as f:
            sizes = [torch.Size(f.get_slice(k).get_shape()).numel() * 4 for k in f.keys()]
        assert len(sizes) == 1 or sum(sizes) <= 100_000
    before = load_file(stories_ckpt / "model.safetensors")
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in before.values())
    ours, _ = load_checkpoint(stories_ckpt)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    idx = torch.randint(0, 513, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(idx).logits - ours(idx, attn="causal")).abs().max() < 1e-4
    proc = run("convert.py", export, tmp_path / "back", "--check")
    assert float(proc.stdout.split("=")[-1]) < 1e-4
    after = load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_force_replaces_an_export_and_nothing_else(tmp_path, stories_ckpt):
    run("convert.py", stories_ckpt, tmp_path / "export", "--to", "hf")
    (tmp_path / "export" / "stale.txt").write_text("an earlier export's")
    proc = run("convert.py", stories_ckpt, tmp_path / "export", "--to", "hf", "--force", "--check")
    assert float(proc.stdout.split("=")[-1]) < 1e-4
    assert not (tmp_path / "export" / "stale.txt").exists()
    shutil.copytree(stories_ckpt, tmp_path / "ckpt")  # a checkpoint is not an export: kept
    proc = run("convert.py", stories_ckpt, tmp_path / "ckpt", "--to", "hf", "--force", check=False)
    assert_user_error(proc, "not an export")
    assert (tmp_path / "ckpt" / "tokenizer.model").is_file() and not (tmp_path / "ckpt" / "tokenizer.json").exists()


def test_a_sentencepiece_model_that_would_encode_differently_is_refused(tmp_path):
    """A unigram SentencePiece model is not LLaMA's BPE: its tokenizer.json would encode otherwise, so no export."""
    import sentencepiece

    text = tmp_path / "text.txt"
    text.write_text((ASSETS / "text" / "tinystories_val.txt").read_text()[:100_000])
    sentencepiece.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(tmp_path / "uni"),
        vocab_size=600,
        model_type="unigram",
        byte_fallback=True,
        minloglevel=2,
    )
    tiny_llama_with(tmp_path / "hf", 600)
    run("convert.py", tmp_path / "hf", tmp_path / "ckpt", "--tokenizer", tmp_path / "uni.model")
    proc = run("convert.py", tmp_path / "ckpt", tmp_path / "export", "--to", "hf", check=False)
    assert_user_error(proc, "BPE SentencePiece")
    assert not (tmp_path / "export").exists()
