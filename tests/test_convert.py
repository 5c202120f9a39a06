"""convert.py against things we did not write: transformers' logits and the real stories260K model."""

import functools
import http.server
import json
import threading

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import STORIES_BIN, STORIES_TOK, STORY_START, assert_user_error, hf_tokenizer_files, run
from tokenizer import load_tokenizer


def tiny_gpt2(directory, **save_kwargs):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(directory, **save_kwargs)
    hf_tokenizer_files(directory, "gpt2")
    return model


def tiny_llama(directory, **save_kwargs):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random init leaves norms at 1: perturb them so they are really tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory, **save_kwargs)
    hf_tokenizer_files(directory, "llama")
    return model


def max_logit_diff(reference, ckpt):
    ours, meta = load_checkpoint(ckpt)
    vocab = reference.config.vocab_size
    idx = torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (reference(idx).logits - ours(idx, attn="causal")[..., :vocab]).abs().max().item(), ours, meta


@pytest.mark.parametrize("save_kwargs", [{}, {"max_shard_size": "300KB"}], ids=["single", "sharded"])
def test_gpt2_parity_with_transformers(tmp_path, save_kwargs):
    ref = tiny_gpt2(tmp_path / "hf", **save_kwargs)
    run("convert.py", tmp_path / "hf", tmp_path / "out")
    diff, ours, meta = max_logit_diff(ref, tmp_path / "out")
    assert diff < 1e-4
    assert meta["mask_token_id"] == 50257 and ours.cfg.vocab_size == 50258 and meta["objective"] == "ar"
    assert meta["bos_token_id"] == meta["eos_token_id"] == 50256
    # the new mask row is the mean of the others
    emb = ours.tok_emb.weight
    torch.testing.assert_close(emb[50257], emb[:50257].mean(0))


@pytest.mark.parametrize("save_kwargs", [{}, {"max_shard_size": "1MB"}], ids=["single", "sharded"])
def test_llama_parity_with_transformers(tmp_path, save_kwargs):
    ref = tiny_llama(tmp_path / "hf", **save_kwargs)
    run("convert.py", tmp_path / "hf", tmp_path / "out")
    diff, ours, meta = max_logit_diff(ref, tmp_path / "out")
    assert diff < 1e-4
    assert ours.cfg.n_kv_head == 2 and not ours.cfg.tie_embeddings and ours.cfg.rope_theta == 50000.0
    torch.testing.assert_close(ours.lm_head.weight[32000], ours.lm_head.weight[:32000].mean(0))


def test_llama_from_pytorch_bin_and_check_flag(tmp_path):
    ref = tiny_llama(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(ref.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    proc = run("convert.py", tmp_path / "hf", tmp_path / "out", "--check")
    diff = float(proc.stdout.split("=")[-1])
    assert diff < 1e-4


def test_llama2c_check_compares_logits_with_transformers(tmp_path):
    proc = run("convert.py", STORIES_BIN, tmp_path / "out", "--tokenizer", STORIES_TOK, "--check")
    assert proc.stdout.startswith("check: max abs logit difference vs transformers")
    assert float(proc.stdout.split("=")[-1]) < 1e-4


def test_stories260k_greedy_story(stories_ckpt):
    """The llama2.c import (header, layout, RoPE permutation) is right: the real model tells its story."""
    model, meta = load_checkpoint(stories_ckpt)
    tok = load_tokenizer(stories_ckpt)
    ids = [meta["bos_token_id"]]
    with torch.no_grad():
        for _ in range(40):
            ids.append(model(torch.tensor([ids]), attn="causal")[0, -1, : tok.n_vocab].argmax().item())
    assert tok.decode(ids).startswith(STORY_START)


def test_diffugpt_layout_and_reused_mask(tmp_path):
    """A DiffuGPT-S-style directory: embed_tokens / denoise_model / lm_head keys, mask 10541."""
    from safetensors.torch import load_file, save_file

    ref = tiny_gpt2(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    wrapped = {"embed_tokens.weight": state["transformer.wte.weight"].clone()}
    wrapped |= {
        "denoise_model." + k.removeprefix("transformer."): v for k, v in state.items() if k != "transformer.wte.weight"
    }
    wrapped["lm_head.weight"] = state["transformer.wte.weight"].clone()
    (tmp_path / "hf" / "model.safetensors").unlink()
    save_file(wrapped, tmp_path / "hf" / "model.safetensors")
    proc = run("convert.py", tmp_path / "hf", tmp_path / "out", "--check")
    assert float(proc.stdout.split("=")[-1]) < 1e-4
    diff, ours, meta = max_logit_diff(ref, tmp_path / "out")
    assert diff < 1e-4
    assert meta["objective"] == "diffusion" and meta["mask_token_id"] == 10541 and ours.cfg.vocab_size == 50257
    # saved with shared tensors deduplicated, the tied embedding may survive only as lm_head.weight
    del wrapped["embed_tokens.weight"]
    save_file(wrapped, tmp_path / "hf" / "model.safetensors")
    run("convert.py", tmp_path / "hf", tmp_path / "out2")
    assert max_logit_diff(ref, tmp_path / "out2")[0] < 1e-4


def test_released_checkpoints_are_recognised_by_content_not_name(tmp_path):
    """DiffuLLaMA's and DiffuGPT's tokenizers declare their mask token (the official code decodes with
    tokenizer.mask_token_id): that, not a directory name, marks a released diffusion checkpoint."""
    ref = tiny_llama(tmp_path / "model-a")  # a name that says nothing
    (tmp_path / "model-a" / "special_tokens_map.json").write_text(json.dumps({"mask_token": "ти"}))
    run("convert.py", tmp_path / "model-a", tmp_path / "out-a")
    diff, ours, meta = max_logit_diff(ref, tmp_path / "out-a")
    assert diff < 1e-4 and ours.cfg.vocab_size == 32000  # the mask reuses an id: no new row
    assert (meta["objective"], meta["mask_token_id"], meta["source"]["format"]) == ("diffusion", 811, "diffullama")
    tiny_gpt2(tmp_path / "model-b")
    config = {"mask_token": {"content": "------------", "special": True}}
    (tmp_path / "model-b" / "tokenizer_config.json").write_text(json.dumps(config))
    run("convert.py", tmp_path / "model-b", tmp_path / "out-b")
    meta = json.loads((tmp_path / "out-b" / "config.json").read_text())
    assert (meta["objective"], meta["mask_token_id"], meta["source"]["format"]) == ("diffusion", 10541, "diffugpt")
    # an added token, as DiffuGPT-M's 50257, is found through added_tokens.json
    (tmp_path / "model-b" / "tokenizer_config.json").write_text(json.dumps({"mask_token": "[MASK]"}))
    (tmp_path / "model-b" / "added_tokens.json").write_text(json.dumps({"[MASK]": 50256}))
    run("convert.py", tmp_path / "model-b", tmp_path / "out-c")
    assert json.loads((tmp_path / "out-c" / "config.json").read_text())["mask_token_id"] == 50256
    # stock models declare none: AR, with a new mask token; so does a directory merely called diffullama
    tiny_llama(tmp_path / "diffullama")
    run("convert.py", tmp_path / "diffullama", tmp_path / "out-d")
    meta = json.loads((tmp_path / "out-d" / "config.json").read_text())
    assert (meta["objective"], meta["mask_token_id"]) == ("ar", 32000)
    (tmp_path / "model-b" / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<no such token>"}))
    (tmp_path / "model-b" / "added_tokens.json").unlink()
    assert_user_error(run("convert.py", tmp_path / "model-b", tmp_path / "out-e", check=False), "mask token")


def test_text_never_encodes_to_a_reused_mask_token(tmp_path):
    tiny_gpt2(tmp_path / "hf")
    run("convert.py", tmp_path / "hf", tmp_path / "out", "--mask-token", "10541")
    tok = load_tokenizer(tmp_path / "out")
    text = "a ------------ b ------------------------"
    assert 10541 in tok.enc.encode_ordinary(text)
    ids = tok.encode(text)
    assert 10541 not in ids and tok.decode(ids) == text
    assert tok.decode([64, 10541, 65], show_masks=True) == "a█b"


def test_sentencepiece_reused_mask_is_respelled(tmp_path):
    tiny_llama(tmp_path / "hf")
    run("convert.py", tmp_path / "hf", tmp_path / "out", "--mask-token", "811")
    tok = load_tokenizer(tmp_path / "out")
    text = "Привет мати кити"
    assert 811 in tok.sp.encode(text)
    ids = tok.encode(text)
    assert 811 not in ids and tok.decode(ids) == text


def test_hub_download_from_local_server(tmp_path):
    """The hub URL layout served on 127.0.0.1: download, cache, resume a partial file, convert."""
    tiny_gpt2(tmp_path / "site" / "org" / "tiny" / "resolve" / "main")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
            rng = self.headers.get("Range")
            path = tmp_path / "site" / self.path.lstrip("/")
            if rng and path.is_file():
                start = int(rng.split("=")[1].rstrip("-"))
                data = path.read_bytes()[start:]
                self.send_response(206)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=tmp_path / "site"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "cache"
        weights = tmp_path / "site" / "org" / "tiny" / "resolve" / "main" / "model.safetensors"
        (cache / "org--tiny").mkdir(parents=True)  # a download cut off half way
        (cache / "org--tiny" / "model.safetensors.part").write_bytes(weights.read_bytes()[:1000])
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "DIFFU_CACHE": str(cache), "HF_TOKEN": "secret"}
        run("convert.py", "org/tiny", tmp_path / "out", env=env)
        assert (cache / "org--tiny" / "model.safetensors").read_bytes() == weights.read_bytes()
        assert ("/org/tiny/resolve/main/model.safetensors", "bytes=1000-", "Bearer secret") in requests
        load_checkpoint(tmp_path / "out")
        n = len(requests)
        run("convert.py", "org/tiny", tmp_path / "out2", env=env)  # cached: nothing fetched again
        assert len(requests) == n
        proc = run("convert.py", "org/missing", tmp_path / "out3", env=env, check=False)
        assert_user_error(proc, "HTTP 404")
        assert not (tmp_path / "out3").exists()
    finally:
        server.shutdown()


def test_an_existing_output_is_kept_unless_forced_and_ours(tmp_path):
    """An existing OUT is refused; --force replaces a checkpoint, and never a folder or file of the user's."""
    tiny_gpt2(tmp_path / "hf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(run("convert.py", tmp_path / "hf", out, check=False), "already exists")
    assert_user_error(run("convert.py", tmp_path / "hf", out, "--force", check=False), "not a checkpoint")
    assert (out / "keep.txt").read_text() == "mine"
    run("convert.py", tmp_path / "hf", tmp_path / "ckpt")
    (tmp_path / "ckpt" / "stale.txt").write_text("an earlier conversion's")
    run("convert.py", tmp_path / "hf", tmp_path / "ckpt", "--force")
    assert not (tmp_path / "ckpt" / "stale.txt").exists() and (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_new_mask_token_is_the_mean_row_or_the_noisy_mean(tmp_path):
    from convert import add_mask_token
    from model import ModelConfig

    g = torch.Generator().manual_seed(0)
    for tie in (True, False):
        cfg = ModelConfig(arch="llama", vocab_size=300, n_embd=64, n_layer=1, n_head=2, tie_embeddings=tie)
        rows = {
            "tok_emb.weight": torch.randn(300, 64, generator=g),
            "lm_head.weight": torch.randn(300, 64, generator=g),
        }
        for init in ("mean", "noisy-mean"):
            state = dict(rows)
            c = ModelConfig(**{**cfg.__dict__})
            assert add_mask_token(c, state, init) == 300 and c.vocab_size == 301
            for key in ("tok_emb.weight",) + (() if tie else ("lm_head.weight",)):
                offset = state[key][300] - rows[key].mean(0)
                if init == "mean":
                    assert offset.abs().max() < 1e-6
                else:  # N(0, 1/d): about 1/sqrt(d) per coordinate, the same each time
                    assert 0.5 < offset.std().item() * 64**0.5 < 1.5
                    again = dict(rows)
                    add_mask_token(ModelConfig(**{**cfg.__dict__}), again, init)
                    assert torch.equal(again[key], state[key])
            assert state["lm_head.weight"].shape[0] == (300 if tie else 301)
