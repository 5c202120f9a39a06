"""eval.py: each metric on hand-made cases, and the CLI end to end on the real model."""

import argparse
import json
import math

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import ASSETS, assert_user_error, run
from eval import distinct_n, elbo, fit_prompt, rouge, task_choice, task_lambada
from model import noise_levels
from tokenizer import load_tokenizer


class AnswerOracle:
    """A diffusion 'model' that always answers right: it knows each context's continuation (shifted logits)."""

    def __init__(self, answers, vocab, mask_id):
        self.answers, self.vocab, self.mask_id = answers, vocab, mask_id
        self.tok_emb = torch.nn.Embedding(1, 1)
        self.cfg = argparse.Namespace(block_size=512)

    def __call__(self, x, attn, where, cache=None, start=0):
        logits = torch.full((*x.shape, self.vocab), -30.0)
        for b, row in enumerate(x.tolist()):
            for context, answer in self.answers.items():
                if tuple(row[: len(context)]) == context:
                    for j, token in enumerate(answer):
                        logits[b, len(context) + j - 1, token] = 30.0
        return logits[where]


def test_lambada_stub_that_is_always_right_scores_one_counted_once(stories_ckpt, tmp_path):
    model, meta = load_checkpoint(stories_ckpt)
    tok = load_tokenizer(stories_ckpt)
    lines = ["the cat sat on the mat", "once upon a time there was a girl", "she liked to play with her ball"]
    (tmp_path / "lambada.txt").write_text("\n".join(lines) + "\n")
    answers = {}
    for line in lines:
        context, word = line.rsplit(" ", 1)
        answers[tuple([tok.bos_id] + tok.encode(context))] = tok.encode(" " + word)
    oracle = AnswerOracle(answers, 513, meta["mask_token_id"])
    args = argparse.Namespace(data=tmp_path / "lambada.txt", limit=0, strategy="confidence")
    assert task_lambada(oracle, {**meta, "objective": "diffusion"}, tok, args) == {"accuracy": 1.0, "n": 3}
    wrong = {k: tok.encode(" dog") for k in answers}  # always the same wrong word
    assert (
        task_lambada(AnswerOracle(wrong, 513, meta["mask_token_id"]), {**meta, "objective": "diffusion"}, tok, args)[
            "accuracy"
        ]
        == 0.0
    )


def test_choice_prefers_the_choice_the_model_predicts(stories_ckpt, tmp_path):
    model, meta = load_checkpoint(stories_ckpt)
    tok = load_tokenizer(stories_ckpt)
    items = [
        {"context": "Lily went to the", "choices": ["park", "zebra moon"], "label": 0},
        {"context": "Tom ate an", "choices": ["purple sky", "apple"], "label": 1},
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    answers = {
        tuple([tok.bos_id] + tok.encode(i["context"])): tok.encode(" " + i["choices"][i["label"]]) for i in items
    }

    args = argparse.Namespace(data=tmp_path / "c.jsonl", limit=0, mc=4, seed=0, device="cpu")
    assert task_choice(
        AnswerOracle(answers, 513, meta["mask_token_id"]), {**meta, "objective": "diffusion"}, tok, args
    ) == {"accuracy": 1.0, "n": 2}


def test_rouge_known_values():
    r = rouge(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert r["rouge1"] == pytest.approx(100 * 5 / 6) and r["rouge2"] == pytest.approx(60.0)
    assert r["rougeL"] == pytest.approx(100 * 5 / 6)
    assert rouge(["a b c"], ["a b c"])["rouge2"] == pytest.approx(100.0)


def test_distinct_n():
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5
    assert distinct_n([[1, 2, 3, 4]], 2) == 1.0


def test_noise_levels():
    assert noise_levels(4) == pytest.approx([1e-3 + 0.999 * (j + 0.5) / 4 for j in range(4)])
    mc = noise_levels(8, seed=1)
    assert mc == noise_levels(8, seed=1) and all((j / 8) < (t - 1e-3) / 0.999 < (j + 1) / 8 for j, t in enumerate(mc))


def test_elbo_of_a_perfect_denoiser_is_zero_and_of_uniform_is_log_v():
    x = torch.tensor([[0, 3, 4, 5]])
    maskable = torch.tensor([[False, True, True, True]])
    perfect = AnswerOracle({}, 8, 7)
    perfect.__class__ = type(
        "P",
        (),
        {
            "__call__": lambda self, xt, attn, where: (
                torch.nn.functional.one_hot(torch.nn.functional.pad(x[:, 1:], (0, 1)), 8).float().mul(60)[where]
            )
        },
    )
    assert elbo(perfect, x, maskable, 7, noise_levels(16), 0) < 1e-6

    def uniform(xt, attn, where):
        return torch.zeros(int(where.sum()), 8)

    # E_t[(1/t) · (number masked) · log V] = 3 log V exactly in expectation; a fine grid gets close
    assert elbo(uniform, x, maskable, 7, noise_levels(2000), 0) == pytest.approx(3 * math.log(8), rel=0.05)


def test_cli_tasks_on_the_real_model(stories_ckpt, tmp_path):
    text = ASSETS / "text" / "tinystories_val.txt"
    ar = json.loads(run("eval.py", "--ckpt", stories_ckpt, "--task", "nll", "--data", text, "--limit", "3").stdout)
    assert (
        ar["task"] == "nll"
        and ar["bound"] is False
        and 1.0 < ar["nll"] < 3.0
        and ar["ppl"] == pytest.approx(math.exp(ar["nll"]))
    )
    # the same weights read as a diffusion model before any adaptation: a bound, and a poor one
    ckpt = tmp_path / "as_diffusion"
    import shutil

    shutil.copytree(stories_ckpt, ckpt)
    meta = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**meta, "objective": "diffusion"}))
    d = json.loads(run("eval.py", "--ckpt", ckpt, "--task", "nll", "--data", text, "--limit", "3", "--mc", "4").stdout)
    assert d["bound"] is True and d["nll"] > ar["nll"] and d["tokens"] == ar["tokens"]
    lam = json.loads(
        run(
            "eval.py",
            "--ckpt",
            stories_ckpt,
            "--task",
            "lambada",
            "--data",
            ASSETS / "eval" / "lambada_test.txt",
            "--limit",
            "5",
        ).stdout
    )
    assert lam["n"] == 5 and 0 <= lam["accuracy"] <= 1
    inf = json.loads(run("eval.py", "--ckpt", ckpt, "--task", "infill", "--data", text, "--limit", "3").stdout)
    assert inf["n"] == 3 and 0 <= inf["rouge1"] <= 100
    g = json.loads(
        run(
            "eval.py",
            "--ckpt",
            ckpt,
            "--task",
            "genppl",
            "--judge",
            stories_ckpt,
            "--limit",
            "2",
            "--length",
            "16",
            "--steps",
            "4",
        ).stdout
    )
    assert g["n"] == 2 and g["gen_ppl"] > 1 and 0 < g["distinct2"] <= 1
    assert_user_error(run("eval.py", "--ckpt", ckpt, "--task", "genppl", check=False), "--judge")
    assert_user_error(
        run("eval.py", "--ckpt", ckpt, "--task", "nll", "--data", tmp_path / "none.txt", check=False), "does not exist"
    )


def test_fit_prompt_keeps_whole_contexts_and_the_end_of_long_ones(stories_ckpt):
    tok = load_tokenizer(stories_ckpt)
    text = "Lily went to the park with her mom. " * 8
    ids = tok.encode(text)
    assert fit_prompt(tok, text, len(ids) + 5) == [tok.bos_id] + ids  # fits, even when more than half the room
    assert fit_prompt(tok, text, len(ids) - 3) == [tok.bos_id] + ids[4:]  # room - 1 tokens from the end
    assert fit_prompt(tok, text, 1) == [tok.bos_id]
