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
    from sample import Sampling, generate_ar

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
    mine, _ = generate_ar(ours, [prompt], 16, seeds=[0], mask_id=meta["mask_token_id"], sampling=Sampling(greedy=True))
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
