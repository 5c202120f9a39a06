"""eval.py: each metric on hand-made cases, and the CLI end to end on the real model."""

import argparse
import json
import math
import shutil

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import ASSETS, ROOT, assert_user_error, run
from lab.eval import (
    TASKS,
    Unit,
    distinct_n,
    elbo,
    fit_prompt,
    official_choice_score,
    official_levels,
    parse_args,
    rouge,
    scores,
    task_choice,
    task_lambada,
)
from model import noise_levels
from tokenizer import Tokenizer, load_tokenizer


class AnswerOracle:
    """A diffusion 'model' that always answers right: it knows each context's continuation (shifted logits)."""

    def __init__(self, answers, vocab, mask_id):
        self.answers, self.vocab, self.mask_id = answers, vocab, mask_id
        self.tok_emb = torch.nn.Embedding(1, 1)
        self.cfg = argparse.Namespace(block_size=512)

    def __call__(self, x, attn, where, cache=None, positions=None):
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
        context_ids, answer_ids = tok.encode_continuation(context, " " + word)
        answers[tuple([tok.bos_id] + context_ids)] = answer_ids
    oracle = AnswerOracle(answers, 513, meta["mask_token_id"])
    diffusion = {**meta, "objective": "diffusion"}
    for greedy in (False, True):  # the official sampling at temperature 1, and greedy
        args = argparse.Namespace(
            data=tmp_path / "lambada.txt", limit=0, strategy="confidence", greedy=greedy, seed=0, batch_size=2
        )
        result, records = task_lambada(oracle, diffusion, tok, args)
        assert result == {"accuracy": 1.0, "stderr": 0.0, "n": 3}
        assert [r["prediction_ids"] for r in records] == [r["answer_ids"] for r in records] == list(answers.values())
    wrong = {k: tok.encode(" dog") for k in answers}  # always the same wrong word
    result, records = task_lambada(AnswerOracle(wrong, 513, meta["mask_token_id"]), diffusion, tok, args)
    assert result["accuracy"] == 0.0 and not any(r["correct"] for r in records)


def test_choice_prefers_the_choice_the_model_predicts(stories_ckpt, tmp_path):
    model, meta = load_checkpoint(stories_ckpt)
    tok = load_tokenizer(stories_ckpt)
    items = [
        {"context": "Lily went to the", "choices": ["park", "zebra moon"], "label": 0},
        {"context": "Tom ate an", "choices": ["purple sky", "apple"], "label": 1},
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    items.append({"context": "Ben saw that", "choices": ["the dog", "the sky"], "label": 1, "after": " was blue."})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    answers = {}
    for i in items:  # the right choice, and the text after it, as they follow the context
        context_ids, ids = tok.encode_continuation(i["context"], " " + i["choices"][i["label"]] + i.get("after", ""))
        answers[tuple([tok.bos_id] + context_ids)] = ids
    oracle = AnswerOracle(answers, 513, meta["mask_token_id"])
    for score in ("official", "elbo"):
        args = argparse.Namespace(data=tmp_path / "c.jsonl", limit=0, mc=4, seed=0, score=score, batch_size=3)
        result, records = task_choice(oracle, {**meta, "objective": "diffusion"}, tok, args)
        assert result == {"accuracy": 1.0, "stderr": 0.0, "n": 3, "score": score}
        assert all(len(r["scores"]) == 2 and r["correct"] for r in records)


def test_a_tie_for_the_lowest_score_counts_as_wrong(stories_ckpt, tmp_path):
    """The same choice twice scores the same (its noise is seeded by its text): no answer, whichever is the label."""
    model, meta = load_checkpoint(stories_ckpt)
    items = [{"context": "Lily went to the", "choices": ["park", "park"], "label": label} for label in (0, 1)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    args = argparse.Namespace(data=tmp_path / "c.jsonl", limit=0, mc=4, seed=0, score="official", batch_size=8)
    result, records = task_choice(model, meta, load_tokenizer(stories_ckpt), args)
    assert records[0]["scores"][0] == records[0]["scores"][1] and result["accuracy"] == 0.0


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
            "__call__": lambda self, xt, attn, where, positions=None: (
                torch.nn.functional.one_hot(torch.nn.functional.pad(x[:, 1:], (0, 1)), 8).float().mul(60)[where]
            )
        },
    )
    assert elbo(perfect, x, maskable, 7, noise_levels(16), 0) < 1e-6

    def uniform(xt, attn, where, positions=None):
        return torch.zeros(int(where.sum()), 8)

    # E_t[(1/t) · (number masked) · log V] = 3 log V exactly in expectation; a fine grid gets close
    assert elbo(uniform, x, maskable, 7, noise_levels(2000), 0) == pytest.approx(3 * math.log(8), rel=0.05)


def test_cli_tasks_on_the_real_model(stories_ckpt, tmp_path):
    text = ASSETS / "text" / "tinystories_val.txt"
    ar = json.loads(run("lab/eval.py", "--ckpt", stories_ckpt, "--task", "nll", "--data", text, "--limit", "3").stdout)
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
    d = json.loads(
        run("lab/eval.py", "--ckpt", ckpt, "--task", "nll", "--data", text, "--limit", "3", "--mc", "4").stdout
    )
    assert d["bound"] is True and d["nll"] > ar["nll"] and d["tokens"] == ar["tokens"] and d["stderr"] > 0
    lam = json.loads(
        run(
            "lab/eval.py",
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
    assert lam["n"] == 5 and 0 <= lam["accuracy"] <= 1 and lam["stderr"] >= 0
    inf = json.loads(run("lab/eval.py", "--ckpt", ckpt, "--task", "infill", "--data", text, "--limit", "3").stdout)
    assert inf["n"] == 3 and 0 <= inf["rouge1"] <= 100 and set(inf["stderr"]) == {"rouge1", "rouge2", "rougeL"}
    g = json.loads(
        run(
            "lab/eval.py",
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
    assert_user_error(run("lab/eval.py", "--ckpt", ckpt, "--task", "genppl", check=False), "--judge")
    assert_user_error(
        run("lab/eval.py", "--ckpt", ckpt, "--task", "nll", "--data", tmp_path / "none.txt", check=False),
        "does not exist",
    )


@pytest.mark.parametrize("block", [0, 8])
def test_batched_scores_equal_the_plain_one_sequence_scores(stories_ckpt, block):
    """scores() (padded rows of many sequences and levels) against elbo() and official_choice_score(), for the
    paper's model and a block-diffusion one (blocks of 8: the block ELBO)."""
    model, meta = load_checkpoint(stories_ckpt)
    model, meta = model.double(), {**meta, "objective": "diffusion", "diffusion_block": block}
    g = torch.Generator().manual_seed(0)
    units = [(torch.randint(3, 500, (n,), generator=g).tolist(), 1 + n // 3) for n in (9, 40, 17, 64, 5)]
    for how, levels in (("elbo", noise_levels(5, seed=1)), ("official", official_levels(4))):
        batched = scores(
            model, meta, [Unit(ids, start, levels, k) for k, (ids, start) in enumerate(units)], how, 7, how
        )
        for k, (ids, start) in enumerate(units):
            x = torch.tensor([ids])
            maskable = torch.arange(len(ids))[None] >= start
            if how == "elbo":
                plain = elbo(model, x, maskable, meta["mask_token_id"], levels, k, block=block)
            else:
                plain = official_choice_score(model, x, maskable, meta["mask_token_id"], 4, k, block=block)
                plain *= len(ids) - start
            assert batched[k] == pytest.approx(plain, rel=1e-9), (how, k)


def same(a, b, rel=1e-9):
    """a == b, floats to a relative tolerance, through dicts and lists."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("objective", ["ar", "diffusion"])
def test_every_task_batched_gives_what_each_item_gives_alone(stories_ckpt, tmp_path, objective):
    """--batch-size changes no result: items of different lengths, padded into batches of 5 (and each
    noise level of a scored item a row), give each item's batch-1 result (float64: up to rounding)."""
    model, meta = load_checkpoint(stories_ckpt)
    model, meta, tok = model.double(), {**meta, "objective": objective}, load_tokenizer(stories_ckpt)
    stories = (ASSETS / "text" / "tinystories_val.txt").read_text()[:6000]
    (tmp_path / "stories.txt").write_text(stories)
    lambada = (ASSETS / "eval" / "lambada_test.txt").read_text().splitlines()[:12]
    (tmp_path / "lambada.txt").write_text(
        "\n".join(" ".join(line.split()[-n:]) for n, line in zip(range(4, 60, 5), lambada))
    )
    items = [
        {"context": story[: 10 + 37 * k], "choices": [" ".join(story.split()[k : k + 1 + k % 4]), "blue"], "label": 0}
        for k, story in enumerate(stories.split("\n\n")[:7])
    ]
    (tmp_path / "choice.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    tasks = [
        ("nll", "stories.txt", ["--block-size", "48", "--limit", "7", "--mc", "3"]),
        ("nll", "stories.txt", ["--block-size", "40", "--limit", "7", "--mc", "3", "--t-grid"]),
        ("choice", "choice.jsonl", ["--mc", "4"]),
        ("choice", "choice.jsonl", ["--mc", "4", "--score", "elbo"]),
        ("lambada", "lambada.txt", []),
        ("lambada", "lambada.txt", ["--greedy", "--strategy", "margin"]),
        ("infill", "stories.txt", ["--limit", "6", "--steps", "4"]),
        ("infill", "stories.txt", ["--limit", "6", "--greedy", "--block-length", "3", "--strategy", "random"]),
        ("genppl", None, ["--judge", stories_ckpt, "--limit", "6", "--length", "12", "--steps", "6", "--top-p", "0.9"]),
    ]
    for task, data, options in tasks:
        argv = ["--ckpt", stories_ckpt, "--task", task, *([] if data is None else ["--data", tmp_path / data])]
        results = []
        for batch_size in ("1", "5"):
            args = parse_args([*map(str, argv), *map(str, options), "--batch-size", batch_size])
            result, records = TASKS[task](model, meta, tok, args)
            result.pop("forwards", None)  # genppl's cost: one batch's passes serve all its rows
            results.append((result, records))
        assert same(*results), (task, options, results)


def test_fit_prompt_keeps_whole_contexts_and_the_end_of_long_ones(stories_ckpt):
    tok = load_tokenizer(stories_ckpt)
    text = "Lily went to the park with her mom. " * 8
    ids = tok.encode(text)
    assert fit_prompt(tok, ids, len(ids) + 5) == [tok.bos_id] + ids  # fits, even when more than half the room
    assert fit_prompt(tok, ids, len(ids) - 3) == [tok.bos_id] + ids[4:]  # room - 1 tokens from the end
    assert fit_prompt(tok, ids, 1) == [tok.bos_id]


def test_continuations_are_encoded_as_inside_the_passage_for_every_lambada_passage():
    """LLaMA-2's SentencePiece puts a stray "▁" (29871) before " word" encoded alone: every LAMBADA
    answer came out wrong that way. In its context, each answer is exactly its ids inside the passage."""
    spm = {"type": "sentencepiece", "files": ["tokenizer.model"]}
    bpe = {"type": "gpt2-bpe", "files": []}
    tokenizers = {
        "llama2": Tokenizer(
            ASSETS / "llama2", {"mask_token_id": 811, "bos_token_id": 1, "eos_token_id": 2, "tokenizer": spm}
        ),
        "gpt2": Tokenizer(
            ASSETS / "gpt2", {"mask_token_id": 50257, "bos_token_id": 50256, "eos_token_id": 50256, "tokenizer": bpe}
        ),
    }
    lines = [line.strip() for line in (ASSETS / "eval" / "lambada_test.txt").read_text().splitlines() if line.strip()]
    assert len(lines) == 5153
    for name, tok in tokenizers.items():
        alone = 0
        for line in lines:
            context, word = line.rsplit(" ", 1)
            context_ids, answer_ids = tok.encode_continuation(context, " " + word)
            assert context_ids + answer_ids == tok.encode(line) and context_ids == tok.encode(context), (name, line)
            assert tok.decode(answer_ids).strip() == word
            alone += tok.encode(" " + word) != answer_ids
        assert alone == {"llama2": 5153, "gpt2": 0}[name]  # how the answers were encoded before
    assert tokenizers["llama2"].encode(" Lily") == [29871, 365, 2354]
    assert tokenizers["llama2"].encode_continuation("Her name was", " Lily") == (
        tokenizers["llama2"].encode("Her name was"),
        [365, 2354],
    )


def test_official_choice_score_of_a_uniform_denoiser_is_log_v():
    """eval_forward: the unweighted mean CE per masked token over t = j/T: log V for a uniform model."""
    x = torch.randint(0, 7, (1, 401))
    maskable = torch.ones_like(x, dtype=torch.bool)
    maskable[:, 0] = False  # 400 answer tokens: every level masks some

    def uniform(xt, attn, where, positions=None):
        return torch.zeros(int(where.sum()), 8)

    assert official_choice_score(uniform, x, maskable, 7, 32, 0) == pytest.approx(math.log(8), rel=1e-6)


def test_output_records_one_line_per_item(stories_ckpt, tmp_path):
    items = [{"context": "Lily went to the", "choices": ["park", "moon"], "label": 0}] * 3
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    proc = run(
        "lab/eval.py",
        "--ckpt",
        stories_ckpt,
        "--task",
        "choice",
        "--data",
        tmp_path / "c.jsonl",
        "--output",
        tmp_path / "out.jsonl",
    )
    result = json.loads(proc.stdout)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["scores"]) == 2 for r in records)
    assert result["accuracy"] == sum(r["correct"] for r in records) / 3 and result["stderr"] is not None


LM_EVAL = ROOT / "tests" / "lm_eval"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def as_objective(stories_ckpt, out, objective, block=None):
    """A copy of the converted checkpoint that claims another objective (and block size): eval reads only these."""
    shutil.copytree(stories_ckpt, out)
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "objective": objective, "diffusion_block": block}))
    return out


@pytest.mark.parametrize("objective", ["ar", "diffusion", "blocks"])
def test_lm_eval_harness_equals_eval_py_on_the_same_items(stories_ckpt, tmp_path, objective):
    """The lm-eval model scores each choice exactly as --task choice does (same text, same noise)."""
    pytest.importorskip("lm_eval")
    block = 4 if objective == "blocks" else None
    ckpt = as_objective(stories_ckpt, tmp_path / objective, "ar" if objective == "ar" else "diffusion", block)
    common = ["--ckpt", ckpt, "--mc", "4"]
    ours = json.loads(
        run(
            "lab/eval.py",
            *common,
            "--task",
            "choice",
            "--data",
            LM_EVAL / "stories.jsonl",
            "--output",
            tmp_path / "ours.jsonl",
        ).stdout
    )
    harness = json.loads(
        run(
            "lab/eval.py",
            *common,
            "--lm-eval",
            "diffu_story_choice",
            "--include-path",
            LM_EVAL,
            "--output",
            tmp_path / "harness.jsonl",
            env=OFFLINE,
        ).stdout
    )
    assert harness["results"]["diffu_story_choice"]["acc,none"] == ours["accuracy"]
    tok = load_tokenizer(ckpt)
    items = [json.loads(line) for line in (LM_EVAL / "stories.jsonl").read_text().splitlines()]
    per_token = [json.loads(line)["scores"] for line in (tmp_path / "ours.jsonl").read_text().splitlines()]
    samples = sorted(
        (json.loads(line) for line in (tmp_path / "harness.jsonl").read_text().splitlines()), key=lambda s: s["doc_id"]
    )
    for item, item_scores, sample in zip(items, per_token, samples):
        n = [len(tok.encode_continuation(item["context"], " " + c)[1]) for c in item["choices"]]
        assert len(set(n)) == 1  # equal lengths: acc (sums) and our per-token choice agree
        loglik = [float(r[0][0]) for r in sample["resps"]]
        assert loglik == pytest.approx([-s * k for s, k in zip(item_scores, n)], rel=1e-9)


@pytest.mark.parametrize("block", [None, 4])
def test_lm_eval_rolling_and_generation(stories_ckpt, tmp_path, block):
    pytest.importorskip("lm_eval")
    ckpt = as_objective(stories_ckpt, tmp_path / "diffusion", "diffusion", block)
    out = json.loads(
        run(
            "lab/eval.py",
            "--ckpt",
            ckpt,
            "--mc",
            "4",
            "--lm-eval",
            "diffu_story_rolling,diffu_story_generate",
            "--include-path",
            LM_EVAL,
            "--limit",
            "3",
            "--output",
            tmp_path / "s.jsonl",
            env=OFFLINE,
        ).stdout
    )
    rolling = out["results"]["diffu_story_rolling"]
    assert math.isfinite(rolling["word_perplexity,none"]) and rolling["bits_per_byte,none"] > 0
    generated = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    texts = [s["resps"][0][0] for s in generated if s["task"] == "diffu_story_generate"]
    assert len(texts) == 3 and not any("." in t for t in texts)  # cut at the stop string


@pytest.mark.slow
def test_lm_eval_unknown_task_is_a_one_line_error(stories_ckpt):
    """Slow: telling a task is unknown takes lm-eval's index of its own thousands of tasks (about 15 s)."""
    pytest.importorskip("lm_eval")
    args = ["--ckpt", stories_ckpt, "--lm-eval", "no_such_task", "--include-path", LM_EVAL]
    assert_user_error(run("lab/eval.py", *args, check=False, env=OFFLINE), "no_such_task")
