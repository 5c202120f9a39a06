"""Evaluate AR and diffusion checkpoints in the same units, by the paper's protocols by default.

    python lab/eval.py --ckpt DIR --task nll --data text.txt [--mc 16 | --t-grid]
    python lab/eval.py --ckpt DIR --task lambada --data lambada_test.txt [--greedy]
    python lab/eval.py --ckpt DIR --task choice --data items.jsonl [--score elbo]  # {"context", "choices", "label"}
    python lab/eval.py --ckpt DIR --task infill --data stories.txt
    python lab/eval.py --ckpt DIR --task genppl --judge AR_DIR --steps 64 --length 128
    python lab/eval.py --ckpt DIR --lm-eval hellaswag,piqa [--include-path DIR]  # lm-evaluation-harness 0.4

Each task shows a progress bar and ends with one JSON line on standard output, with the task's
standard error ("stderr"); --output FILE also writes one JSON line per item (window, sample).
The official protocols are those of HKUNLP/DiffuLLaMA's evaluation/eval-diffugpt.py and
eval-diffullama.py; each task's docstring says which part it follows and what is ours.
A continuation (an answer, a choice, a suffix) is tokenized as it follows its context
(Tokenizer.encode_continuation), never on its own. Items are scored and decoded --batch-size
sequences at a time, padded on the right; an item's result does not depend on its batch (each
draws its noise from its own seed), up to float rounding.

nll: AR checkpoints give the exact NLL per token. Diffusion checkpoints give the ELBO,
E_t[(1/t) Σ_masked CE] per token, an upper bound on the NLL ("bound": true), estimated over
t ~ U(1e-3, 1) with --mc samples (stratified, fixed seed) or on a fixed --t-grid of levels.
"""

import argparse
import json
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import load_checkpoint
from data.corpus import texts
from lab.common import sentences
from model import ar_loss, diffusion_loss, mix, noise_levels, predicting, shifted, with_clean_copy
from sample import STRATEGIES, Decoding, Sampling, Trained, decode, valid_logits
from support.cli import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    HelpFormatter,
    UserError,
    add_device_options,
    checked,
    given_options,
    output_file,
    pick_device,
    pick_dtype,
    progress_bar,
)
from support.files import atomic_write, not_an_input
from support.rows import key_mask, pad_right
from tokenizer import load_tokenizer, until_eos

# ---------------------------------------------------------------------------------------------
# Scores


@torch.no_grad()
def level_losses(model, x, maskable, mask_id, ts, seed, shift=True, block=0):
    """(Σ CE/t, Σ CE, number masked) of one sequence x (1, L) at each noise level t, only maskable tokens masked.
    block: a block-diffusion checkpoint's block size; every block at the same t, which leaves the block ELBO's
    expectation as it is (each block's term is an expectation over its own t, all alike)."""
    for j, t in enumerate(ts):
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(mix(seed, j))).to(x.device)
        level = torch.tensor([t], device=x.device)
        weighted, ce, n = diffusion_loss(model, x, maskable, level, noise, mask_id, "full", shift, block=block)
        yield weighted.item(), ce.item(), n.item()


def elbo(model, x, maskable, mask_id, ts, seed, shift=True, block=0):
    """Σ_masked CE/t, averaged over the levels ts: the ELBO of x's maskable tokens (a bound on their NLL)."""
    return sum(w for w, _, _ in level_losses(model, x, maskable, mask_id, ts, seed, shift, block)) / len(ts)


def official_choice_score(model, x, maskable, mask_id, levels, seed, shift=True, block=0):
    """The official multiple-choice score (eval_forward in LLaMA-Factory/src/llamafactory/train/ddm/trainer.py):
    the unweighted mean CE per masked token, averaged over t = j/T, j = 1..T (a level that happens
    to mask nothing counts 0)."""
    losses = level_losses(model, x, maskable, mask_id, official_levels(levels), seed, shift, block)
    return sum(ce / n if n else 0.0 for _, ce, n in losses) / levels


def official_levels(T):
    """The official score's noise levels: t = j/T, j = 1..T."""
    return noise_levels(T, offset=1.0, eps=0.0)


@dataclass
class Unit:
    """A sequence to score: ids[start:] given ids[:start] (ids[0] is BOS), at noise levels whose level j
    draws its uniforms from mix(seed, j)."""

    ids: list
    start: int
    levels: list
    seed: int


@torch.no_grad()
def scores(model, meta, units, how, batch_size, desc):
    """-(log-likelihood) in nats of each Unit's scored tokens, many units per forward pass.

    AR checkpoints: exact. Diffusion: only the scored tokens are masked, at each of the unit's noise
    levels; how "elbo": Σ CE/t averaged over the levels (elbo(), a bound), "official":
    official_choice_score() times the number of scored tokens. One row per unit and level, --batch-size
    rows per pass, right-padded: no query attends to padding and nothing predicts it, so a unit scores
    what it scores alone (up to float rounding).
    """
    ar, device, trained = meta["objective"] == "ar", model.tok_emb.weight.device, Trained.of(meta)
    rows = [(u, j) for u, unit in enumerate(units) for j in range(1 if ar else len(unit.levels))]
    levels = [[] for _ in units]  # (Σ CE/t, Σ CE, number masked) at each of a unit's noise levels
    for first in progress_bar(range(0, len(rows), batch_size), desc=desc):
        batch = rows[first : first + batch_size]
        x, real, maskable = padded([units[u] for u, _ in batch], device)
        if ar:
            ce = ar_loss(model, x, targets=maskable)
            for (u, _), values in zip(batch, ce.split(maskable[:, 1:].sum(1).tolist())):
                levels[u].append((None, values.sum().item(), None))
            continue
        noise = torch.ones(x.shape)  # padding is never maskable, whatever its noise
        for b, (u, j) in enumerate(batch):
            n = len(units[u].ids)
            noise[b, :n] = torch.rand(n, generator=torch.Generator().manual_seed(mix(units[u].seed, j)))
        t = torch.tensor([units[u].levels[j] for u, j in batch], device=device)
        noise, block = noise.to(device), trained.blocks_in(x.shape[1])
        sums = diffusion_loss(
            model,
            x,
            maskable,
            t,
            noise,
            trained.mask_id,
            key_mask(real),
            trained.shift,
            True,
            block,
            ar=trained.keeps_ar,
        )
        for b, (u, _) in enumerate(batch):
            levels[u].append(tuple(v[b].item() for v in sums))
    if ar:
        return [losses[0][1] for losses in levels]
    if how == "official":
        return [
            sum(ce / n if n else 0.0 for _, ce, n in losses) / len(losses) * (len(unit.ids) - unit.start)
            for losses, unit in zip(levels, units)
        ]
    return [sum(w for w, _, _ in losses) / len(losses) for losses in levels]


def padded(units, device):
    """Units -> (their ids right-padded (B, L), where a token is real, where it is scored) for one forward pass."""
    x, real = pad_right([unit.ids for unit in units], device)
    scored = real.clone()
    for b, unit in enumerate(units):
        scored[b, : unit.start] = False
    return x, real, scored


@dataclass
class Job:
    """A sequence to decode: `length` tokens between prefix and suffix ids, drawing from its own seed."""

    prefix: list
    length: int
    suffix: list
    seed: int
    decoding: Decoding


def decode_many(model, meta, tok, jobs, batch_size, desc):
    """Generated ids of each Job -> (ids of each, forward passes).

    Jobs that share a length and decoding options are decoded --batch-size at a time (a batch decodes
    one length), each row from its own seed: a job decodes to the same tokens in any batch
    (sample.generate_batch). AR checkpoints continue the prefix (they cannot see a suffix)."""
    groups = {}
    for k, job in enumerate(jobs):
        groups.setdefault((job.length, job.decoding), []).append(k)
    out, forwards = [None] * len(jobs), 0
    with progress_bar(total=len(jobs), desc=desc) as bar:
        for (length, decoding), ks in groups.items():
            for first in range(0, len(ks), batch_size):
                batch = [jobs[k] for k in ks[first : first + batch_size]]
                rows, seeds = [(job.prefix, job.suffix) for job in batch], [job.seed for job in batch]
                trained = Trained.of(meta, vocab=tok.n_vocab)
                generated, passes, _ = decode(model, trained, rows, length, decoding, seeds=seeds)
                for k, ids in zip(ks[first : first + batch_size], generated):
                    out[k] = ids
                forwards += passes
                bar.update(len(batch))
    return out, forwards


def distinct_n(samples, n=2):
    """Distinct n-grams / all n-grams over all samples (token ids)."""
    grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def rouge(predictions, references, per_item=False):
    """ROUGE-1/2/L F-measures × 100, from Google's rouge-score (the ROUGE-1.5.5 reimplementation the field uses).
    per_item: also the list of each item's scores."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("the infill task needs rouge-score: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    items = [
        {k: 100 * s.fmeasure for k, s in scorer.score(ref, pred).items()} for pred, ref in zip(predictions, references)
    ]
    mean = {k: sum(s[k] for s in items) / max(1, len(items)) for k in ("rouge1", "rouge2", "rougeL")}
    return (mean, items) if per_item else mean


def stderr_of_mean(values):
    """The standard error of the mean of values (None for fewer than two)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def stderr_of_ratio(totals, counts):
    """The standard error of Σ totals / Σ counts over independent units (windows, samples): the ratio estimator's."""
    n = len(totals)
    if n < 2:
        return None
    ratio, mean_count = sum(totals) / sum(counts), sum(counts) / n
    residuals = [t - ratio * c for t, c in zip(totals, counts)]
    return math.sqrt(sum(r * r for r in residuals) / (n - 1) / n) / mean_count


def accuracy(correct):
    """-> (accuracy, its binomial standard error)."""
    n = max(1, len(correct))
    p = sum(correct) / n
    return p, math.sqrt(p * (1 - p) / n)


def fit_prompt(tok, ids, room):
    """[BOS] + the end of the context ids: as much as fits in `room` tokens (long passages lose their start)."""
    head = tok.encode("", bos=True)
    return head + ids[max(0, len(ids) - (room - len(head))) :] if room > len(head) else head


def decoding(args, steps, sampling):
    """sample.py's decoding options, as given to infill, genppl and generate_until."""
    return Decoding(steps, args.strategy, sampling, args.threshold, args.block_length, args.cache)


def read_lines(path):
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    if not any(lines):
        raise UserError(f"--data {path} holds no items")
    return lines


# ---------------------------------------------------------------------------------------------
# Tasks: each returns (the result, one record per item)


def task_nll(model, meta, tok, args):
    """Windows of --block-size over the documents ([BOS] doc [EOS], as data/prepare.py); the first token is context.
    Ours: the official scripts report no NLL. Standard error over windows (each with its own noise draws)."""
    ids = [i for doc in texts([args.data]) for i in tok.encode_document(doc)]
    if len(ids) < 2:
        raise UserError(f"--data {args.data} holds no text")
    L = args.block_size or min(model.cfg.block_size, 512)
    if L > model.cfg.block_size:
        raise UserError(f"--block-size {L} is beyond the model's {model.cfg.block_size} positions")
    windows = [ids[i : i + L] for i in range(0, len(ids) - 1, L)][: args.limit or None]
    levels = noise_levels(args.mc, seed=None if args.t_grid else args.seed)
    units = [Unit(w, 1, levels, mix(args.seed, k)) for k, w in enumerate(windows)]
    totals, counts = scores(model, meta, units, "elbo", args.batch_size, "nll"), [len(w) - 1 for w in windows]
    nll = sum(totals) / sum(counts)
    result = {"nll": nll, "ppl": math.exp(nll), "bound": meta["objective"] != "ar", "tokens": sum(counts)}
    records = [{"window": k, "tokens": c, "nll": t / c} for k, (t, c) in enumerate(zip(totals, counts))]
    return {**result, "stderr": stderr_of_ratio(totals, counts)}, records


def passage_of(line, where):
    """A JSON line's "text": a LAMBADA passage in OpenAI's format."""
    try:
        item = json.loads(line)
    except ValueError:
        raise UserError(f"{where} is not valid JSON") from None
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise UserError(f'{where} has no "text" string (a .jsonl passage is {{"text": ...}})')
    return item["text"].strip()


def task_lambada(model, meta, tok, args):
    """Last-word accuracy (eval_Lambada in eval-diffugpt.py and eval-diffullama.py): the passage's last
    word is masked and filled in with as many steps as it has tokens, in confidence order, sampling at
    temperature 1 (a fixed seed per passage). --greedy: the most probable token instead (ours). AR
    checkpoints decode greedily: the answer must be their most probable continuation. Each passage
    is counted once."""
    lines = [line for line in read_lines(args.data) if line][: args.limit or None]
    if args.data.suffix == ".jsonl":  # OpenAI's lambada_test.jsonl: {"text": passage} a line
        lines = [passage_of(line, f"{args.data}:{k + 1}") for k, line in enumerate(lines)]
    sampling = Sampling(greedy=args.greedy or meta["objective"] == "ar")
    jobs, answers = [], []
    for k, line in enumerate(lines):
        if " " not in line:
            raise UserError(f"--data {args.data}: passage {k + 1} has no context before its last word")
        context, word = line.rsplit(" ", 1)
        context_ids, answer_ids = tok.encode_continuation(context, " " + word)
        n = len(answer_ids)
        prefix = fit_prompt(tok, context_ids, model.cfg.block_size - n)
        jobs.append(Job(prefix, n, [], mix(args.seed, k), Decoding(n, args.strategy, sampling)))
        answers.append((word, answer_ids))
    predictions, _ = decode_many(model, meta, tok, jobs, args.batch_size, "lambada")
    correct = [tok.decode(ids).strip() == word for ids, (word, _) in zip(predictions, answers)]
    records = [
        {"context_ids": job.prefix, "answer_ids": answer_ids, "prediction_ids": ids, "correct": right}
        for job, (_, answer_ids), ids, right in zip(jobs, answers, predictions, correct)
    ]
    acc, se = accuracy(correct)
    return {"accuracy": acc, "stderr": se, "n": len(lines)}, records


def read_choice_items(path):
    """JSON lines {"context", "choices", "label", "after"?}, each checked, with a one-line error naming the line."""
    items = []
    for k, line in enumerate(read_lines(path), 1):
        if not line:
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{k} is not valid JSON") from None
        choices = item.get("choices") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("context"), str):
            raise UserError(f'{path}:{k} has no "context" string')
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c.strip() for c in choices):
            raise UserError(f'{path}:{k} has no "choices" (a non-empty list of non-empty strings)')
        label = item.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise UserError(f'{path}:{k}: "label" must be an index into its {len(choices)} choices, got {label!r}')
        if not isinstance(item.get("after", ""), str):
            raise UserError(f'{path}:{k}: "after" must be a string')
        items.append(item)
    return items


def continuation_unit(model, tok, context, continuation, args):
    """The unit of scores() for a continuation after its context; shared by --task choice and the
    lm-eval model, so that both give the same number for the same text.

    ids = [BOS] + context + continuation, the continuation tokenized in its context and the context
    cut from the start to fit. Diffusion, with only the continuation masked: --score official, the
    official mean CE per masked token over t = j/T (T = --mc) times the token count; --score elbo,
    the ELBO (a bound) over --mc stratified Monte Carlo levels, as LLaDA and Dream estimate it. The
    noise is seeded by the text: a continuation scores the same wherever it sits in a file.
    """
    context_ids, ids = tok.encode_continuation(context, continuation)
    ids = ids[: model.cfg.block_size - 1]
    prefix = fit_prompt(tok, context_ids, model.cfg.block_size - len(ids))
    seed = mix(args.seed, zlib.crc32(f"{context}\0{continuation}".encode()))
    levels = official_levels(args.mc) if args.score == "official" else noise_levels(args.mc, seed=seed)
    return Unit(prefix + ids, len(prefix), levels, seed)


def task_choice(model, meta, tok, args):
    """Multiple choice (eval-diffugpt.py: eval_hellaswag, eval_wino, eval_piqa, eval_siqa): lowest wins (a tie: wrong).

    Each choice is scored on context + " " + choice + after, with the choice and the text after it
    masked ("after": Winogrande's partial scoring, appended as it is), per token: by default the official
    score, --score elbo the ELBO (see continuation_unit). AR: the exact NLL per token.
    """
    items = read_choice_items(args.data)[: args.limit or None]
    units = [
        continuation_unit(model, tok, item["context"], " " + choice.strip() + item.get("after", ""), args)
        for item in items
        for choice in item["choices"]
    ]
    nlls = scores(model, meta, units, args.score, args.batch_size, "choice")
    per_token = iter([nll / (len(unit.ids) - unit.start) for nll, unit in zip(nlls, units)])
    correct, records = [], []
    for item in items:
        item_scores = [next(per_token) for _ in item["choices"]]
        prediction = min(range(len(item_scores)), key=item_scores.__getitem__)
        tied = item_scores.count(item_scores[prediction]) > 1  # a tie is no answer: counted wrong
        correct.append(prediction == item["label"] and not tied)
        records.append(
            {"scores": item_scores, "label": item["label"], "prediction": prediction, "correct": correct[-1]}
        )
    acc, se = accuracy(correct)
    return {"accuracy": acc, "stderr": se, "n": len(items), "score": args.score}, records


def task_infill(model, meta, tok, args):
    """Stories with the middle sentence removed: generate it between the sentences before and after
    (eval-diffugpt.py: eval_infilling on ROCStories, the third of five sentences); ROUGE against it."""
    stories = [sentences(d) for d in texts([args.data])]
    stories = [s for s in stories if len(s) >= 3][: args.limit or None]
    if not stories:
        raise UserError(f"--data {args.data} holds no story of three or more sentences")
    jobs, references = [], []
    for k, s in enumerate(stories):
        mid = len(s) // 2
        before = " ".join(s[:mid])
        context_ids, middle_ids = tok.encode_continuation(before, " " + s[mid])
        _, suffix_ids = tok.encode_continuation(before + " " + s[mid], " " + " ".join(s[mid + 1 :]))
        n = min(len(middle_ids), model.cfg.block_size // 2)
        suffix = suffix_ids[: (model.cfg.block_size - n) // 2]
        prefix = fit_prompt(tok, context_ids, model.cfg.block_size - n - len(suffix))
        sampling = Sampling(greedy=args.greedy)
        jobs.append(Job(prefix, n, suffix, mix(args.seed, k), decoding(args, args.steps or n, sampling)))
        references.append(s[mid])
    generated, _ = decode_many(model, meta, tok, jobs, args.batch_size, "infill")
    predictions = [tok.decode(ids).strip() for ids in generated]
    mean, per_item = rouge(predictions, references, per_item=True)
    stderr = {k: stderr_of_mean([s[k] for s in per_item]) for k in mean}
    records = [{"prediction": p, "reference": r, **s} for p, r, s in zip(predictions, references, per_item)]
    return {**mean, "stderr": stderr, "n": len(predictions)}, records


def task_genppl(model, meta, tok, args):
    """Unconditional samples scored by an AR judge (perplexity of the text), with distinct-2 diversity.
    Standard error of Gen PPL over samples (delta method on the per-token NLL)."""
    if not args.judge:
        raise UserError("--task genppl needs --judge DIR (an AR checkpoint)")
    if 1 + args.length > model.cfg.block_size:
        raise UserError(f"--length {args.length} and BOS are beyond the model's {model.cfg.block_size} positions")
    judge, judge_meta = load_checkpoint(args.judge, device=args.device, dtype=args.dtype)
    judge_tok = load_tokenizer(args.judge, judge_meta)
    if judge_meta["objective"] != "ar":
        raise UserError(f"--judge {args.judge} is not an AR checkpoint")
    steps, sampling = args.steps or args.length, Sampling(temperature=args.temperature, top_p=args.top_p)
    bos = tok.encode("", bos=True)
    jobs = [
        Job(bos, args.length, [], mix(args.seed, s), decoding(args, steps, sampling)) for s in range(args.limit or 16)
    ]
    samples, forwards = decode_many(model, meta, tok, jobs, args.batch_size, "genppl")
    totals, counts, records = [], [], []
    for ids in samples:
        text = tok.decode(until_eos(ids, tok.eos_id))
        judged = judge_tok.encode(text, bos=True)[: judge.cfg.block_size]
        records.append({"text": text, "tokens": len(judged) - 1})
        if len(judged) < 2:
            continue
        with torch.no_grad():
            totals.append(ar_loss(judge, torch.tensor([judged], device=args.device)).sum().item())
        counts.append(len(judged) - 1)
        records[-1]["nll"] = totals[-1] / counts[-1]
    gen_ppl = math.exp(sum(totals) / max(1, sum(counts)))
    se = stderr_of_ratio(totals, counts)
    result = {
        "gen_ppl": gen_ppl,
        "stderr": None if se is None else gen_ppl * se,
        "distinct2": distinct_n(samples),
        "n": len(samples),
        "steps": steps,
        "length": args.length,
        "forwards": forwards,
    }
    return result, records


# ---------------------------------------------------------------------------------------------
# lm-evaluation-harness


@torch.no_grad()
def greedy_flags(model, meta, tok, units, batch_size):
    """Whether each unit's scored tokens (scores()) are the model's most probable: AR given the true
    prefix at every token; diffusion with all of them masked, in one pass. --batch-size units at a time."""
    ar, trained, flags = meta["objective"] == "ar", Trained.of(meta), []
    for first in range(0, len(units), batch_size):
        batch = units[first : first + batch_size]
        x, real, maskable = padded(batch, model.tok_emb.weight.device)
        inputs, shift = (x, True) if ar else (x.masked_fill(maskable, trained.mask_id), trained.shift)
        where, attn, positions = predicting(maskable, shift), "causal" if ar else key_mask(real), None
        targets = shifted(x) if shift else x  # what the logit at each position predicts
        if not ar and (block := trained.blocks_in(x.shape[1])):  # as the model was trained
            inputs, where, attn, positions = with_clean_copy(inputs, x, where, attn, block, shift, trained.keeps_ar)
            targets = torch.cat([targets, targets], 1)
        logits = model(inputs, attn=attn, where=where, positions=positions)
        hits = valid_logits(logits, trained.mask_id, tok.n_vocab).argmax(-1) == targets[where]
        flags += [bool(row.all()) for row in hits.split(where.sum(1).tolist())]
    return flags


def harness_model(model, meta, tok, args):
    """This checkpoint as an lm-evaluation-harness 0.4 model (defined here: lm-eval is optional).
    Requests are scored and decoded --batch-size at a time, as our tasks are."""
    from lm_eval.api.model import LM

    class Model(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            """(log p(continuation | context), is_greedy): exact (AR), or --score official / elbo (diffusion)."""
            units = [continuation_unit(model, tok, *r.args, args) for r in requests]
            nlls = scores(model, meta, units, args.score, args.batch_size, "loglikelihood")
            return [(-nll, g) for nll, g in zip(nlls, greedy_flags(model, meta, tok, units, args.batch_size))]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            """log p(text) in nats: exact (AR), or minus the ELBO with the shift (diffusion: a bound),
            over windows of the model's context, each window's first token the previous one's last."""
            units, owners, L = [], [], model.cfg.block_size
            for n, r in enumerate(requests):
                ids, text_seed = tok.encode(r.args[0], bos=True), zlib.crc32(r.args[0].encode())
                # windows overlap by one token, the context of the next: every token is scored once
                for k, i in enumerate(range(0, len(ids) - 1, L - 1)):
                    seed = mix(args.seed, text_seed, k)
                    units.append(Unit(ids[i : i + L], 1, noise_levels(args.mc, seed=seed), seed))
                    owners.append(n)
            totals = [0.0] * len(requests)
            for n, nll in zip(owners, scores(model, meta, units, "elbo", args.batch_size, "loglikelihood_rolling")):
                totals[n] -= nll
            return totals

        def generate_until(self, requests, disable_tqdm=False):
            """This project's sampler (--strategy, --steps; greedy unless the task samples), cut at the stop strings."""
            jobs = []
            for k, r in enumerate(requests):
                context, options = r.args
                n = min(options.get("max_gen_toks", 256), model.cfg.block_size // 2)  # leave room for context
                prefix = fit_prompt(tok, tok.encode(context), model.cfg.block_size - n)
                temperature = options.get("temperature", 0.0)
                sampling = Sampling(
                    temperature=temperature or 1.0, greedy=not options.get("do_sample") or not temperature
                )
                jobs.append(Job(prefix, n, [], mix(args.seed, k), decoding(args, args.steps or n, sampling)))
            generated, _ = decode_many(model, meta, tok, jobs, args.batch_size, "generate_until")
            out = []
            for r, ids in zip(requests, generated):
                text, until = tok.decode(until_eos(ids, tok.eos_id)), r.args[1].get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    text = text.split(stop)[0]
                out.append(text)
            return out

    return Model()


def run_harness(model, meta, tok, args, manager):
    """lm_eval.simple_evaluate on --lm-eval TASKS -> (the harness's results, one record per document)."""
    import lm_eval

    tasks = args.lm_eval.split(",")
    out = lm_eval.simple_evaluate(
        model=harness_model(model, meta, tok, args),
        tasks=tasks,
        limit=args.limit or None,
        task_manager=manager,
        log_samples=args.output is not None,
    )
    records = [{"task": t, **s} for t, samples in (out.get("samples") or {}).items() for s in samples]
    return {"tasks": tasks, "results": out["results"]}, records


def harness_tasks(args):
    """lm-eval's task index (with --include-path), after checking that every --lm-eval task is in it."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("--lm-eval needs lm-evaluation-harness: pip install 'lm-eval>=0.4.5,<0.5'") from None
    tasks, include = args.lm_eval.split(","), str(args.include_path) if args.include_path else None
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):  # indexing lm-eval's own tasks takes ~15 s
        manager = TaskManager(include_path=include)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"--lm-eval: no task named {', '.join(unknown)} (lm-eval's names; --include-path for your own)")
    return manager


WINDOW = checked(int, lambda v: v == 0 or v >= 2, "0 (the model's) or at least 2: a context and a token")
ONLY_FOR = {  # options that only these tasks read (None: --lm-eval); with another task they are refused
    "judge": ["genppl"],
    "t_grid": ["nll"],
    "score": ["choice", None],
    "data": ["nll", "lambada", "choice", "infill"],
    "include_path": [None],
    "greedy": ["lambada", "infill"],
    "temperature": ["genppl"],
    "top_p": ["genppl"],
    **dict.fromkeys(["threshold", "block_length", "cache"], ["infill", "genppl", None]),  # sample.py's decoding
}
TASKS = {"nll": task_nll, "lambada": task_lambada, "choice": task_choice, "infill": task_infill, "genppl": task_genppl}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    # what to evaluate
    a("--ckpt", required=True, type=Path, help="checkpoint directory (AR or diffusion)")
    a("--task", choices=sorted(TASKS), help="one of our tasks (see the module docstring)")
    a("--lm-eval", metavar="TASKS", help="lm-evaluation-harness tasks, comma-separated, instead of --task")
    a("--include-path", type=Path, help="--lm-eval: a folder of your own task YAMLs")
    a("--data", type=Path, help="the task's data file")
    a(
        "--limit",
        type=NON_NEGATIVE,
        default=0,
        help="evaluate only the first N items (windows for nll, samples for genppl)",
    )
    a("--output", type=output_file, help="also write one JSON line per item (window, sample) here")
    a("--seed", type=int, default=0, help="noise and sampling seed")
    # scoring
    a("--mc", type=COUNT, default=32, help="noise levels: nll Monte Carlo samples; choice T (the paper: 32)")
    a("--t-grid", action="store_true", help="nll: a fixed grid of levels instead of Monte Carlo")
    a("--score", choices=["official", "elbo"], default="official", help="choice, diffusion: how a choice is scored")
    a("--block-size", type=WINDOW, default=0, help="nll window (default: the model's, at most 512)")
    # decoding
    a(
        "--steps",
        type=NON_NEGATIVE,
        default=0,
        help="decoding steps (infill: default the middle's length; genppl: --length)",
    )
    a("--strategy", choices=STRATEGIES, default="confidence", help="diffusion decoding order (sample.py)")
    a("--greedy", action="store_true", help="lambada, infill: greedy decoding")
    a("--judge", type=Path, help="genppl: AR checkpoint that scores the samples")
    a("--length", type=COUNT, default=128, help="genppl: tokens per sample")
    a("--temperature", type=POSITIVE, default=1.0, help="genppl: sampling temperature")
    a("--top-p", type=PROBABILITY, default=1.0, help="genppl: nucleus sampling")
    a("--threshold", type=PROBABILITY, help="genppl, infill: parallel decoding threshold (sample.py)")
    a("--block-length", type=NON_NEGATIVE, default=0, help="genppl, infill: semi-autoregressive blocks (sample.py)")
    a(
        "--batch-size",
        type=COUNT,
        default=32,
        help="sequences per forward pass (a scored one: each of its noise levels)",
    )
    a("--cache", action="store_true", help="genppl, infill: approximate key/value cache (sample.py)")
    add_device_options(p)
    args = p.parse_args(argv)
    if bool(args.task) == bool(args.lm_eval):
        raise UserError("give --task or --lm-eval (one of them)")
    for name in given_options(p, argv).keys() & ONLY_FOR.keys():  # an option the task does not read is refused
        if args.task not in ONLY_FOR[name]:
            raise UserError(
                f"--{name.replace('_', '-')} does nothing with {f'--task {args.task}' if args.task else '--lm-eval'}"
            )
    if args.include_path and not args.include_path.is_dir():
        raise UserError(f"--include-path {args.include_path} is not a directory")
    if args.task not in (None, "genppl") and not args.data:
        raise UserError(f"--task {args.task} needs --data")
    if args.data and not args.data.is_file():
        raise UserError(f"--data {args.data} does not exist")
    not_an_input(args.output, args.data, args.ckpt, args.judge)
    args.device = pick_device(args.device)
    args.dtype = pick_dtype(args.dtype, args.device)
    return args


def main(argv=None):
    args = parse_args(argv)
    manager = harness_tasks(args) if args.lm_eval else None
    model, meta = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
    tok = load_tokenizer(args.ckpt, meta)
    block = meta.get("diffusion_block") or 0  # what sample.py refuses for a block-diffusion checkpoint
    for refused, why in [
        (args.cache, "--cache: its cache is exact, and always on"),
        (args.task == "infill", "infill: its blocks see only the past"),
        (args.block_length > block, f"--block-length over {block}"),
    ]:
        if block and refused:
            raise UserError(f"{args.ckpt} is a block-diffusion checkpoint (blocks of {block}), so no {why}")
    if args.lm_eval:
        result, records = run_harness(model, meta, tok, args, manager)
    else:
        result, records = TASKS[args.task](model, meta, tok, args)
        result = {"task": args.task, **result}
    if args.output:
        atomic_write(args.output, "".join(json.dumps(r, default=str) + "\n" for r in records))
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
