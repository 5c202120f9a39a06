"""The families people adapt today, against what we did not write: Hugging Face tokenizer.json files read
as transformers reads them (LLaMA-3, Qwen2.5, SmolLM2 rules over GPT-2's real vocabulary)."""

import json

import pytest

from conftest import ASSETS, run
from tokenizer import load_tokenizer

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

# The pre-tokenizer rules each family ships in its tokenizer.json (public; the GPT-2 one is tokenizer.GPT2_PATTERN)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_PATTERN = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
SPECIALS = {  # (special tokens, tokenizer_config's bos and eos): as Qwen2.5, LLaMA-3 and SmolLM2 ship them
    "gpt2": ([], None, "<|endoftext|>"),
    "qwen2": (["<|im_start|>", "<|im_end|>"], None, "<|endoftext|>"),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>"),
    "smollm2": (["<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>"),
}
TEXTS = [
    "In 2024, 12345 people   paid $3.50 for it.\n\n\tThe end.",
    "café — naïve 日本語 🙂 don't WE'LL   trailing   ",
    "<|im_start|>user\nWhat is 7 + 15?<|im_end|>\n<|endoftext|>",
]


def tokenizer_json(directory, family):
    """A tokenizer.json and tokenizer_config.json with the family's rules, over GPT-2's real vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE.from_file(str(ASSETS / "gpt2" / "encoder.json"), str(ASSETS / "gpt2" / "vocab.bpe")))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family in ("gpt2", "smollm2"))
    if family in ("qwen2", "llama3"):
        pattern = QWEN2_PATTERN if family == "qwen2" else LLAMA3_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"), byte_level])
    elif family == "smollm2":  # digits one by one
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    specials, bos, eos = SPECIALS[family]
    tok.add_special_tokens(["<|endoftext|>", *specials])
    if bos and family == "llama3":  # LLaMA-3 puts BOS first; Qwen2.5 and SmolLM2 put nothing
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size(with_added_tokens=True)


def tiny_llama_with(directory, vocab_size):
    import torch

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)


@pytest.fixture(scope="module", params=["gpt2", "qwen2", "llama3", "smollm2"])
def family_ckpt(request, tmp_path_factory):
    """(family, a converted checkpoint whose tokenizer is the family's tokenizer.json, transformers' tokenizer)."""
    hf = tmp_path_factory.mktemp(request.param) / "hf"
    n = tokenizer_json(hf, request.param)
    tiny_llama_with(hf, n + 3)
    out = hf.parent / "ckpt"
    run("convert.py", hf, out)
    return request.param, out, transformers.AutoTokenizer.from_pretrained(hf)


def test_tokenizer_json_encodes_as_transformers(family_ckpt):
    family, ckpt, hf = family_ckpt
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["tokenizer"]["type"] == "tokenizer.json"
    tok = load_tokenizer(ckpt)
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id if family == "llama3" else None, hf.eos_token_id)
    wiki = (ASSETS / "text" / "wiki_demo.txt").read_text()[:20000]
    for text in [*TEXTS, wiki]:
        ordinary = tok.encode(text)
        assert ordinary == hf.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert tok.encode(text, special=True) == hf.encode(text, add_special_tokens=False)
        assert tok.encode(text, bos=True, special=True) == hf.encode(text)  # BOS where the family puts one
        assert tok.decode(ordinary) == text
    if family == "smollm2":
        assert tok.encode("12345") == [tok.encode(d)[0] for d in "12345"]  # digits one by one
    if family == "gpt2":  # the same rules as tiktoken's GPT-2, which we did not write either
        import tiktoken.load

        gpt2 = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(ASSETS / "gpt2" / "vocab.bpe"), encoder_json_file=str(ASSETS / "gpt2" / "encoder.json")
        )
        from tokenizer import GPT2_PATTERN

        enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=gpt2, special_tokens={})
        assert tok.encode(wiki) == enc.encode_ordinary(wiki)


def test_tokenizer_json_continuation_and_documents(family_ckpt):
    family, ckpt, hf = family_ckpt
    tok = load_tokenizer(ckpt)
    for line in (ASSETS / "eval" / "lambada_test.txt").read_text().splitlines()[:200]:
        context, word = line.rsplit(" ", 1)
        head, tail = tok.encode_continuation(context, " " + word)
        assert head + tail == tok.encode(line) and tok.decode(tail) == " " + word
    doc = tok.encode_document("Hello world.")
    assert doc[-1] == tok.eos_id and (doc[0] == tok.bos_id) == (tok.bos_id not in (None, tok.eos_id))


def test_a_reused_mask_token_is_respelled_in_tokenizer_json(tmp_path):
    hf = tmp_path / "hf"
    n = tokenizer_json(hf, "qwen2")
    tiny_llama_with(hf, n)
    the = 383  # "ĠThe": common in text
    run("convert.py", hf, tmp_path / "ckpt", "--mask-token", str(the))
    tok = load_tokenizer(tmp_path / "ckpt")
    ids = tok.encode("The cat. The dog.")
    assert the not in ids and tok.decode(ids) == "The cat. The dog."


def tiny_family(directory, family, tied=False):
    """A tiny random Qwen2 / LLaMA-3 model saved as transformers saves it, with its family's tokenizer.json;
    biases and norms perturbed, so that a conversion dropping them would show."""
    import torch

    n = tokenizer_json(directory, family)
    common = dict(
        vocab_size=n + 3,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    if family == "qwen2":
        rope = {"rope_type": "default", "rope_theta": 1e6}
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, rope_parameters=rope))
    else:  # LLaMA-3.1's RoPE scaling, with an original context short enough that it changes every position
        rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0}
        rope |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_parameters=rope))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.eval().save_pretrained(directory)
    return model


@pytest.mark.parametrize("family, tied", [("qwen2", True), ("qwen2", False), ("llama3", False)])
def test_family_logits_and_greedy_text_match_transformers(tmp_path, family, tied):
    import torch

    from checkpoint import load_checkpoint
    from sample import Sampling, Trained, generate_ar

    ref = tiny_family(tmp_path / "hf", family, tied)
    proc = run("convert.py", tmp_path / "hf", tmp_path / "ckpt", "--check")
    assert float(proc.stdout.split("=")[-1]) < 1e-4
    ours, meta = load_checkpoint(tmp_path / "ckpt")
    assert ours.cfg.qkv_bias == (family == "qwen2") and ours.cfg.tie_embeddings == tied
    assert ours.cfg.rope_scaling == (8.0 if family == "llama3" else 1.0)
    vocab = ref.config.vocab_size
    idx = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ref(idx).logits - ours(idx, attn="causal")[..., :vocab]).abs().max() < 1e-4
    tok = load_tokenizer(tmp_path / "ckpt")
    prompt = tok.encode("The capital of France is", bos=True)
    theirs = ref.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, min_new_tokens=16)
    mine, *_ = generate_ar(ours, [prompt], 16, Trained.of(meta), seeds=[0], sampling=Sampling(greedy=True))
    assert mine[0] == theirs[0].tolist()


def test_unsupported_variants_are_refused_in_one_line(tmp_path):
    from conftest import assert_user_error

    tiny_family(tmp_path / "hf", "qwen2")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, words in [
        ({"use_sliding_window": True}, "sliding-window"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "RoPE scaling"),
        ({"model_type": "mistral"}, "model_type"),
    ]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **change}))
        assert_user_error(run("convert.py", tmp_path / "hf", tmp_path / "out", check=False), *words.split())


# ---------------------------------------------------------------------------------------------
# GGUF: tiny files written here with the gguf package, laid out as llama.cpp's convert script lays them
# out, and read back by transformers (gguf_file=) as the reference


def llama_cpp_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permutes q and k rows so that RoPE rotates interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(qtype, rows, cols, seed=0):
    """Random bytes for a type gguf cannot quantize in Python (Q4_K, Q6_K), with sane float16 scales."""
    import gguf
    import numpy as np

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scales = np.float16(0.01).tobytes()
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d and dmin lead the block
        raw[..., 0:2], raw[..., 2:4] = np.frombuffer(scales, np.uint8), np.frombuffer(scales, np.uint8)
    else:  # Q6_K: d ends the block
        raw[..., -2:] = np.frombuffer(scales, np.uint8)
    return raw.reshape(rows, -1)


def tiny_gguf(path, qtype="F32", arch="llama"):
    """A tiny random LLaMA as a GGUF file: 2 layers, width 256, GQA, untied; a prefix of GPT-2's real vocabulary
    as its byte-level BPE, with <|endoftext|>, <|im_start|>, <|im_end|> as control tokens; every 2-D weight
    stored as qtype."""
    import gguf
    import numpy as np

    encoder = json.loads((ASSETS / "gpt2" / "encoder.json").read_text())
    n = 4096  # GPT-2's first 4,096 tokens: its 256 bytes and the first 3,840 merges, a real (smaller) BPE
    tokens = [*sorted(encoder, key=encoder.get)[:n], "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = (ASSETS / "gpt2" / "vocab.bpe").read_text().splitlines()[1 : n - 256 + 1]
    d, ffn, n_head, n_kv, layers = 256, 512, 4, 2, 2
    rng = np.random.default_rng(0)
    weights = {"token_embd.weight": (len(tokens), d), "output_norm.weight": (d,), "output.weight": (len(tokens), d)}
    for i in range(layers):
        weights |= {f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.ffn_norm.weight": (d,)}
        weights |= {f"blk.{i}.attn_q.weight": (d, d), f"blk.{i}.attn_k.weight": (d // 2, d)}
        weights |= {f"blk.{i}.attn_v.weight": (d // 2, d), f"blk.{i}.attn_output.weight": (d, d)}
        weights |= {f"blk.{i}.ffn_gate.weight": (ffn, d), f"blk.{i}.ffn_up.weight": (ffn, d)}
        weights |= {f"blk.{i}.ffn_down.weight": (d, ffn)}
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(1e5)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(d // n_head)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * n + [gguf.TokenType.CONTROL] * 3)
    w.add_token_merges(merges)
    w.add_bos_token_id(n + 1)
    w.add_eos_token_id(n + 2)
    w.add_add_bos_token(False)
    qtype = getattr(gguf.GGMLQuantizationType, qtype)
    for name, shape in weights.items():
        x = (rng.standard_normal(shape) * (0.1 if len(shape) == 1 else 0.05) + (len(shape) == 1)).astype(np.float32)
        if "attn_q" in name or "attn_k" in name:
            x = llama_cpp_permute(x, n_head if "attn_q" in name else n_kv)
        if len(shape) == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, x)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, x.astype(np.float16))
        elif qtype in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K):
            w.add_tensor(name, random_blocks(qtype, *shape), raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"])
def test_gguf_weights_match_transformers_reading_the_same_file(tmp_path, qtype):
    import torch

    pytest.importorskip("gguf")
    from checkpoint import load_checkpoint

    file = tiny_gguf(tmp_path / f"tiny-{qtype}.gguf", qtype)
    run("convert.py", file, tmp_path / "ckpt")
    ours, meta = load_checkpoint(tmp_path / "ckpt")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=file.name, dtype=torch.float32)
    idx = torch.randint(0, 4099, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = ref(idx).logits, ours(idx, attn="causal")[..., : ref.config.vocab_size]
    assert (theirs - mine).abs().max() < 1e-4 * theirs.abs().max().clamp(min=1)
    assert meta["source"]["format"] == "gguf" and meta["eos_token_id"] == 4098 and meta["bos_token_id"] is None


def test_gguf_tokenizer_matches_transformers_reading_the_same_file(tmp_path):
    pytest.importorskip("gguf")
    file = tiny_gguf(tmp_path / "tiny.gguf")
    run("convert.py", file, tmp_path / "ckpt")
    tok = load_tokenizer(tmp_path / "ckpt")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=file.name)
    for text in [*TEXTS, (ASSETS / "text" / "wiki_demo.txt").read_text()[:5000]]:
        assert tok.encode(text, special=True) == hf.encode(text, add_special_tokens=False)
        assert tok.decode(tok.encode(text)) == text


def test_gguf_we_cannot_read_is_one_line(tmp_path):
    pytest.importorskip("gguf")
    from conftest import assert_user_error

    for file, words in [
        (tiny_gguf(tmp_path / "q5.gguf", "Q5_0"), "Q5_0"),
        (tiny_gguf(tmp_path / "falcon.gguf", "F32", arch="falcon"), "falcon"),
    ]:
        assert_user_error(run("convert.py", file, tmp_path / "out", check=False), *words.split())
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    assert_user_error(run("convert.py", tmp_path / "broken.gguf", tmp_path / "out", check=False), "GGUF")


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct: the real model, as a llama.cpp GGUF file (Q4_1)

SMOLLM2 = ASSETS / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_smollm2_converts_offline_answers_and_matches_transformers(tmp_path):
    """Slow: 135M parameters dequantized twice (ours and transformers'), about a minute."""
    import torch

    pytest.importorskip("gguf")
    from checkpoint import load_checkpoint
    from sample import Sampling, Trained, generate_ar
    from tokenizer import until_eos

    run("convert.py", SMOLLM2, tmp_path / "smollm2")
    model, meta = load_checkpoint(tmp_path / "smollm2")
    tok = load_tokenizer(tmp_path / "smollm2")
    prompt = tok.encode(CHAT, bos=True, special=True)
    out, *_ = generate_ar(
        model, [prompt], 16, Trained.of(meta, eos_id=tok.eos_id), seeds=[0], sampling=Sampling(greedy=True)
    )
    assert tok.decode(until_eos(out[0][len(prompt) :], tok.eos_id)) == "The capital of France is Paris."
    hf_tok = transformers.AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    for text in [CHAT, *TEXTS, (ASSETS / "text" / "wiki_demo.txt").read_text()[:5000]]:
        assert tok.encode(text, special=True) == hf_tok.encode(text, add_special_tokens=False)
    ref = transformers.AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32)
    idx = torch.tensor([prompt + tok.encode(" The capital of France is Paris. It is a city of light.")])
    with torch.no_grad():
        diff = (ref(idx).logits - model(idx, attn="causal")[..., : ref.config.vocab_size]).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.slow
def test_the_gpu_recipe_runs_end_to_end_on_a_cpu(tmp_path):
    """lab/smollm2.py as its docstring's smoke test: SmolLM2 converted, adapted three times for a few steps (stopped
    by SIGTERM at the budget, which saves), all evaluated, and the last one's drafts verified by its AR mode."""
    pytest.importorskip("gguf")
    smoke = "--device cpu --minutes 0.3 --batch-size 1 --block-size 64 --limit 2 --mc 2 --test-stories 20"
    proc = run("lab/smollm2.py", "--assets", ASSETS, "--out", tmp_path / "run", *smoke.split(), "--speed-tokens", 8)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    speed = results.pop("speculative")
    assert len(results) == 5 and "| SmolLM2-135M, AR parent |" in proc.stdout
    parent, *adapted, ar_mode = results.values()
    assert not parent["tinystories"]["bound"] and all(r["wikitext"]["bound"] for r in adapted)
    assert not ar_mode["tinystories"]["bound"] and all(s["lossless"] for s in speed.values())
    assert all(
        json.loads((tmp_path / "run" / d / "config.json").read_text())["training"]["step"] > 0
        for d in ("diffusion", "blocks-32", "blocks-4-w1.0")
    )
