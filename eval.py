"""Evaluate AR and diffusion checkpoints in the same units.

    python eval.py --ckpt DIR --task nll --data text.txt [--mc 16 | --t-grid 16]
    python eval.py --ckpt DIR --task lambada --data lambada_test.txt
    python eval.py --ckpt DIR --task choice --data items.jsonl        # {"context", "choices", "label"}
    python eval.py --ckpt DIR --task infill --data stories.txt
    python eval.py --ckpt DIR --task genppl --judge AR_DIR --steps 64 --length 128

Each task shows a progress bar and ends with one JSON line on standard output.

nll: AR checkpoints give the exact NLL per token. Diffusion checkpoints give the ELBO,
E_t[(1/t) Σ_masked CE] per token, an upper bound on the NLL ("bound": true), estimated over
t ~ U(1e-3, 1) with --mc samples (stratified, fixed seed) or on a fixed --t-grid of levels.
"""

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import load_checkpoint
from corpus import texts
from model import UserError, ar_loss, diffusion_loss, mix, noise_levels
from sample import Sampling, decode
from tokenizer import load_tokenizer

# ---------------------------------------------------------------------------------------------
# Scores


@torch.no_grad()
def elbo(model, x, maskable, mask_id, ts, seed, shift=True):
    """Σ over levels t of Σ_masked CE/t for one sequence x (1, L), averaged over the levels."""
    total = 0.0
    for j, t in enumerate(ts):
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(mix(seed, j))).to(x.device)
        t = torch.tensor([t], device=x.device)
        weighted, _, _ = diffusion_loss(model, x, maskable, t, noise, mask_id, "full", shift)
        total += weighted.item()
    return total / len(ts)


@torch.no_grad()
def sequence_nll(model, meta, x, maskable, levels, seed):
    """Σ NLL (AR, exact) or Σ ELBO (diffusion) of the maskable tokens of x (1, L), as targets of the shift."""
    if meta["objective"] == "ar":
        return ar_loss(model, x, targets=maskable).sum().item()
    return elbo(model, x, maskable, meta["mask_token_id"], levels, seed, meta.get("shift", True))


def distinct_n(samples, n=2):
    """Distinct n-grams / all n-grams over all samples (token ids)."""
    grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def rouge(predictions, references):
    """ROUGE-1/2/L F-measures × 100, from Google's rouge-score (the ROUGE-1.5.5 reimplementation the field uses)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("the infill task needs rouge-score: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: 100 * sum(s[k].fmeasure for s in scores) / max(1, len(scores)) for k in ("rouge1", "rouge2", "rougeL")}


def fit_prompt(tok, text, room):
    """[BOS] + the end of the text's tokens: as much as fits in `room` tokens (long passages lose their start)."""
    head, ids = tok.encode("", bos=True), tok.encode(text)
    return head + ids[max(0, len(ids) - (room - len(head))) :] if room > len(head) else head


def decoding_options(args):
    """sample.py's diffusion decoding options, as given to infill and genppl."""
    return dict(strategy=args.strategy, threshold=args.threshold, block_length=args.block_length, cache=args.cache)


# ---------------------------------------------------------------------------------------------
# Tasks


def task_nll(model, meta, tok, args):
    """Windows of --block-size over the documents ([BOS] doc [EOS], as data/prepare.py); the first token is context."""
    ids = [i for doc in texts([args.data]) for i in tok.encode_document(doc)]
    L = args.block_size or min(model.cfg.block_size, 512)
    windows = [ids[i : i + L] for i in range(0, len(ids) - 1, L)][: args.limit or None]
    levels = noise_levels(args.mc, seed=None if args.t_grid else args.seed)
    total, count = 0.0, 0
    for k, w in enumerate(tqdm(windows, desc="nll", file=sys.stderr)):
        x = torch.tensor([w], device=args.device)
        maskable = torch.ones_like(x, dtype=torch.bool)
        maskable[:, 0] = False
        total += sequence_nll(model, meta, x, maskable, levels, mix(args.seed, k))
        count += len(w) - 1
    nll = total / count
    return {"nll": nll, "ppl": math.exp(nll), "bound": meta["objective"] != "ar", "tokens": count}


def task_lambada(model, meta, tok, args):
    """Last-word accuracy; the diffusion model fills the word's masked tokens in as many steps, greedily."""
    lines = [line.strip() for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = lines[: args.limit or None]
    correct = 0
    for line in tqdm(lines, desc="lambada", file=sys.stderr):
        context, word = line.rsplit(" ", 1)
        n = len(tok.encode(" " + word))
        prefix = fit_prompt(tok, context, model.cfg.block_size - n)
        x, _ = decode(
            model, meta, prefix, n, vocab=tok.n_vocab, sampling=Sampling(greedy=True), steps=n, strategy=args.strategy
        )
        correct += tok.decode(x[0, len(prefix) :].tolist()).strip() == word  # each passage counted once
    return {"accuracy": correct / max(1, len(lines)), "n": len(lines)}


def task_choice(model, meta, tok, args):
    """Multiple choice: the choice with the lowest NLL (AR) or ELBO (diffusion, only the choice masked) per token."""
    items = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    items = items[: args.limit or None]
    levels = noise_levels(args.mc)  # the paper: 32 fixed noise levels
    correct = 0
    for k, item in enumerate(tqdm(items, desc="choice", file=sys.stderr)):
        scores = []
        for choice in item["choices"]:
            ids = tok.encode(" " + choice.strip())[: model.cfg.block_size - 1]
            context = fit_prompt(tok, item["context"], model.cfg.block_size - len(ids))
            x = torch.tensor([context + ids], device=args.device)
            maskable = torch.zeros_like(x, dtype=torch.bool)
            maskable[:, len(context) :] = True
            scores.append(sequence_nll(model, meta, x, maskable, levels, mix(args.seed, k)) / len(ids))
        correct += min(range(len(scores)), key=scores.__getitem__) == item["label"]
    return {"accuracy": correct / max(1, len(items)), "n": len(items)}


def task_infill(model, meta, tok, args):
    """Stories with the middle sentence removed: generate it between the sentences before and after."""
    predictions, references = [], []
    stories = [re.split(r"(?<=[.!?])\s+", d.replace("\n", " ")) for d in texts([args.data])]
    stories = [s for s in stories if len(s) >= 3][: args.limit or None]
    for s in tqdm(stories, desc="infill", file=sys.stderr):
        mid = len(s) // 2
        n = min(len(tok.encode(" " + s[mid])), model.cfg.block_size // 2)
        suffix = tok.encode(" " + " ".join(s[mid + 1 :]))[: (model.cfg.block_size - n) // 2]
        prefix = fit_prompt(tok, " ".join(s[:mid]), model.cfg.block_size - n - len(suffix))
        x, _ = decode(
            model,
            meta,
            prefix,
            n,
            vocab=tok.n_vocab,
            suffix=suffix,
            seed=args.seed,
            sampling=Sampling(greedy=args.greedy),
            steps=args.steps or n,
            **decoding_options(args),
        )
        predictions.append(tok.decode(x[0, len(prefix) : len(prefix) + n].tolist()).strip())
        references.append(s[mid])
    return {**rouge(predictions, references), "n": len(predictions)}


def task_genppl(model, meta, tok, args):
    """Unconditional samples scored by an AR judge (perplexity of the text), with distinct-2 diversity."""
    if not args.judge:
        raise UserError("--task genppl needs --judge DIR (an AR checkpoint)")
    judge, judge_meta = load_checkpoint(args.judge, device=args.device)
    judge_tok = load_tokenizer(args.judge, judge_meta)
    if judge_meta["objective"] != "ar":
        raise UserError(f"--judge {args.judge} is not an AR checkpoint")
    n, samples = args.limit or 16, []
    steps = args.steps or args.length
    forwards = 0
    for start in tqdm(range(0, n, args.batch_size), desc="genppl", file=sys.stderr):
        k = min(args.batch_size, n - start)
        x, passes = decode(
            model,
            meta,
            tok.encode("", bos=True),
            args.length,
            vocab=tok.n_vocab,
            num_samples=k,
            seed=mix(args.seed, start),
            sampling=Sampling(top_p=args.top_p),
            steps=steps,
            **decoding_options(args),
        )
        forwards += passes
        samples += [row[1:].tolist() for row in x]
    total, count = 0.0, 0
    for ids in samples:
        text = tok.decode(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids)
        judged = judge_tok.encode(text, bos=True)[: judge.cfg.block_size]
        if len(judged) < 2:
            continue
        with torch.no_grad():
            total += ar_loss(judge, torch.tensor([judged], device=args.device)).sum().item()
        count += len(judged) - 1
    return {
        "gen_ppl": math.exp(total / max(1, count)),
        "distinct2": distinct_n(samples),
        "n": len(samples),
        "steps": steps,
        "length": args.length,
        "forwards": forwards,
    }


TASKS = {"nll": task_nll, "lambada": task_lambada, "choice": task_choice, "infill": task_infill, "genppl": task_genppl}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    a = p.add_argument
    a("--ckpt", required=True, type=Path)
    a("--task", required=True, choices=sorted(TASKS))
    a("--data", type=Path, help="the task's data file")
    a("--limit", type=int, default=0, help="evaluate only the first N items (windows for nll, samples for genppl)")
    a("--steps", type=int, default=0, help="decoding steps (infill: default the middle's length; genppl: --length)")
    a("--seed", type=int, default=0)
    a("--mc", type=int, default=32, help="noise levels for the ELBO (nll: Monte Carlo samples; choice: grid)")
    a("--t-grid", action="store_true", help="nll: a fixed grid of levels instead of Monte Carlo")
    a("--block-size", type=int, default=0, help="nll window (default: the model's, at most 512)")
    a("--strategy", default="confidence", help="diffusion decoding strategy (sample.py)")
    a("--greedy", action="store_true", help="infill: greedy decoding")
    a("--judge", type=Path, help="genppl: AR checkpoint that scores the samples")
    a("--length", type=int, default=128, help="genppl: tokens per sample")
    a("--top-p", type=float, default=1.0, help="genppl: nucleus sampling")
    a("--threshold", type=float, help="genppl, infill: parallel decoding threshold (sample.py)")
    a("--block-length", type=int, default=0, help="genppl, infill: semi-autoregressive blocks (sample.py)")
    a("--batch-size", type=int, default=8, help="genppl: samples decoded together")
    a("--cache", action="store_true", help="genppl, infill: approximate key/value cache (sample.py)")
    a("--device", default="cpu")
    args = p.parse_args(argv)
    if args.task != "genppl" and not args.data:
        raise UserError(f"--task {args.task} needs --data")
    if args.data and not args.data.is_file():
        raise UserError(f"--data {args.data} does not exist")
    if args.mc < 1 or args.limit < 0 or args.steps < 0 or args.length < 1 or args.batch_size < 1:
        raise UserError("--mc, --length and --batch-size must be at least 1; --limit and --steps not negative")
    model, meta = load_checkpoint(args.ckpt, device=args.device)
    tok = load_tokenizer(args.ckpt, meta)
    result = TASKS[args.task](model, meta, tok, args)
    print(json.dumps({"task": args.task, **result}))
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
