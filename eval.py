"""Evaluate AR and diffusion checkpoints in the same units, by the paper's protocols by default.

    python eval.py --ckpt DIR --task nll --data text.txt [--mc 16 | --t-grid]
    python eval.py --ckpt DIR --task lambada --data lambada_test.txt [--greedy]
    python eval.py --ckpt DIR --task choice --data items.jsonl [--score elbo]  # {"context", "choices", "label"}
    python eval.py --ckpt DIR --task infill --data stories.txt
    python eval.py --ckpt DIR --task genppl --judge AR_DIR --steps 64 --length 128
    python eval.py --ckpt DIR --lm-eval hellaswag,piqa [--include-path DIR]  # lm-evaluation-harness 0.4

Each task shows a progress bar and ends with one JSON line on standard output, with the task's
standard error ("stderr"); --output FILE also writes one JSON line per item (window, sample).
The official protocols are those of HKUNLP/DiffuLLaMA's evaluation/eval-diffugpt.py and
eval-diffullama.py; each task's docstring says which part it follows and what is ours.
A continuation (an answer, a choice, a suffix) is tokenized as it follows its context
(Tokenizer.encode_continuation), never on its own.

nll: AR checkpoints give the exact NLL per token. Diffusion checkpoints give the ELBO,
E_t[(1/t) Σ_masked CE] per token, an upper bound on the NLL ("bound": true), estimated over
t ~ U(1e-3, 1) with --mc samples (stratified, fixed seed) or on a fixed --t-grid of levels.
"""

import argparse
import json
import math
import os
import re
import sys
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import load_checkpoint, pick_device, pick_dtype
from corpus import texts
from model import HelpFormatter, UserError, ar_loss, diffusion_loss, mix, noise_levels, predicting
from sample import STRATEGIES, Sampling, decode, valid_logits
from tokenizer import load_tokenizer

# ---------------------------------------------------------------------------------------------
# Scores


@torch.no_grad()
def level_losses(model, x, maskable, mask_id, ts, seed, shift=True):
    """(Σ CE/t, Σ CE, number masked) of one sequence x (1, L) at each noise level t, only maskable tokens masked."""
    for j, t in enumerate(ts):
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(mix(seed, j))).to(x.device)
        weighted, ce, n = diffusion_loss(
            model, x, maskable, torch.tensor([t], device=x.device), noise, mask_id, "full", shift
        )
        yield weighted.item(), ce.item(), n.item()


def elbo(model, x, maskable, mask_id, ts, seed, shift=True):
    """Σ_masked CE/t, averaged over the levels ts: the ELBO of x's maskable tokens (a bound on their NLL)."""
    return sum(w for w, _, _ in level_losses(model, x, maskable, mask_id, ts, seed, shift)) / len(ts)


def official_choice_score(model, x, maskable, mask_id, levels, seed, shift=True):
    """The official multiple-choice score (eval_forward in LLaMA-Factory/src/llamafactory/train/ddm/trainer.py):
    the unweighted mean CE per masked token, averaged over t = j/T, j = 1..T (a level that happens
    to mask nothing counts 0)."""
    losses = level_losses(model, x, maskable, mask_id, [j / levels for j in range(1, levels + 1)], seed, shift)
    return sum(ce / n if n else 0.0 for _, ce, n in losses) / levels


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


def decoding_options(args):
    """sample.py's diffusion decoding options, as given to infill and genppl."""
    return dict(strategy=args.strategy, threshold=args.threshold, block_length=args.block_length, cache=args.cache)


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
    totals, counts = [], []
    for k, w in enumerate(tqdm(windows, desc="nll", file=sys.stderr, disable=None)):
        x = torch.tensor([w], device=args.device)
        maskable = torch.ones_like(x, dtype=torch.bool)
        maskable[:, 0] = False
        totals.append(sequence_nll(model, meta, x, maskable, levels, mix(args.seed, k)))
        counts.append(len(w) - 1)
    nll = sum(totals) / sum(counts)
    result = {"nll": nll, "ppl": math.exp(nll), "bound": meta["objective"] != "ar", "tokens": sum(counts)}
    records = [{"window": k, "tokens": c, "nll": t / c} for k, (t, c) in enumerate(zip(totals, counts))]
    return {**result, "stderr": stderr_of_ratio(totals, counts)}, records


def task_lambada(model, meta, tok, args):
    """Last-word accuracy (eval_Lambada in eval-diffugpt.py and eval-diffullama.py): the passage's last
    word is masked and filled in with as many steps as it has tokens, in confidence order, sampling at
    temperature 1 (a fixed seed per passage). --greedy: the most probable token instead (ours). AR
    checkpoints decode greedily: the answer must be their most probable continuation. Each passage
    is counted once."""
    lines = [line for line in read_lines(args.data) if line][: args.limit or None]
    correct, records = [], []
    for k, line in enumerate(tqdm(lines, desc="lambada", file=sys.stderr, disable=None)):
        if " " not in line:
            raise UserError(f"--data {args.data}: passage {k + 1} has no context before its last word")
        context, word = line.rsplit(" ", 1)
        context_ids, answer_ids = tok.encode_continuation(context, " " + word)
        n = len(answer_ids)
        prefix = fit_prompt(tok, context_ids, model.cfg.block_size - n)
        sampling = Sampling(greedy=args.greedy or meta["objective"] == "ar")
        x, _ = decode(
            model,
            meta,
            prefix,
            n,
            vocab=tok.n_vocab,
            sampling=sampling,
            seed=mix(args.seed, k),
            steps=n,
            strategy=args.strategy,
        )
        prediction = x[0, len(prefix) :].tolist()
        correct.append(tok.decode(prediction).strip() == word)
        records.append(
            {"context_ids": prefix, "answer_ids": answer_ids, "prediction_ids": prediction, "correct": correct[-1]}
        )
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
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise UserError(f'{path}:{k} has no "choices" (a non-empty list of strings)')
        label = item.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise UserError(f'{path}:{k}: "label" must be an index into its {len(choices)} choices, got {label!r}')
        if not isinstance(item.get("after", ""), str):
            raise UserError(f'{path}:{k}: "after" must be a string')
        items.append(item)
    return items


def continuation_input(model, tok, context, continuation, device):
    """x (1, L) = [BOS] + context + continuation, the continuation tokenized in its context and the
    context cut from the start to fit; maskable (1, L) marks the continuation."""
    context_ids, ids = tok.encode_continuation(context, continuation)
    ids = ids[: model.cfg.block_size - 1]
    prefix = fit_prompt(tok, context_ids, model.cfg.block_size - len(ids))
    x = torch.tensor([prefix + ids], device=device)
    maskable = torch.zeros_like(x, dtype=torch.bool)
    maskable[:, len(prefix) :] = True
    return x, maskable


def text_seed(seed, context, continuation):
    """The noise of a scored continuation is seeded by its text: it scores the same wherever it sits in a file."""
    return mix(seed, zlib.crc32(f"{context}\0{continuation}".encode()))


def score_continuation(model, meta, x, maskable, seed, args):
    """-(log-likelihood) in nats of x's maskable tokens (continuation_input); shared by --task choice
    and the lm-eval model, so that both give the same number for the same text.

    AR: exact. Diffusion, with only the continuation masked: --score official, the official mean CE
    per masked token over t = j/T (T = --mc) times the token count; --score elbo, the ELBO (a bound)
    over --mc stratified Monte Carlo levels, as LLaDA and Dream estimate it.
    """
    if meta["objective"] == "diffusion" and args.score == "official":
        mean_ce = official_choice_score(
            model, x, maskable, meta["mask_token_id"], args.mc, seed, meta.get("shift", True)
        )
        return mean_ce * maskable.sum().item()
    return sequence_nll(model, meta, x, maskable, noise_levels(args.mc, seed=seed), seed)


def task_choice(model, meta, tok, args):
    """Multiple choice (eval-diffugpt.py: eval_hellaswag, eval_wino, eval_piqa, eval_siqa): lowest score wins.

    Each choice is scored on context + " " + choice + after, with the choice and the text after it
    masked ("after": Winogrande's partial scoring, appended as it is), per token: by default the official
    score, --score elbo the ELBO (see score_continuation). AR: the exact NLL per token.
    """
    items = read_choice_items(args.data)[: args.limit or None]
    correct, records = [], []
    for item in tqdm(items, desc="choice", file=sys.stderr, disable=None):
        scores = []
        for choice in item["choices"]:
            continuation = " " + choice.strip() + item.get("after", "")
            x, maskable = continuation_input(model, tok, item["context"], continuation, args.device)
            seed = text_seed(args.seed, item["context"], continuation)
            scores.append(score_continuation(model, meta, x, maskable, seed, args) / maskable.sum().item())
        prediction = min(range(len(scores)), key=scores.__getitem__)
        correct.append(prediction == item["label"])
        records.append({"scores": scores, "label": item["label"], "prediction": prediction, "correct": correct[-1]})
    acc, se = accuracy(correct)
    return {"accuracy": acc, "stderr": se, "n": len(items), "score": args.score}, records


def task_infill(model, meta, tok, args):
    """Stories with the middle sentence removed: generate it between the sentences before and after
    (eval-diffugpt.py: eval_infilling on ROCStories, the third of five sentences); ROUGE against it."""
    predictions, references = [], []
    stories = [re.split(r"(?<=[.!?])\s+", d.replace("\n", " ")) for d in texts([args.data])]
    stories = [s for s in stories if len(s) >= 3][: args.limit or None]
    if not stories:
        raise UserError(f"--data {args.data} holds no story of three or more sentences")
    for s in tqdm(stories, desc="infill", file=sys.stderr, disable=None):
        mid = len(s) // 2
        before = " ".join(s[:mid])
        context_ids, middle_ids = tok.encode_continuation(before, " " + s[mid])
        _, suffix_ids = tok.encode_continuation(before + " " + s[mid], " " + " ".join(s[mid + 1 :]))
        n = min(len(middle_ids), model.cfg.block_size // 2)
        suffix = suffix_ids[: (model.cfg.block_size - n) // 2]
        prefix = fit_prompt(tok, context_ids, model.cfg.block_size - n - len(suffix))
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
    n, samples = args.limit or 16, []
    steps = args.steps or args.length
    forwards = 0
    for start in tqdm(range(0, n, args.batch_size), desc="genppl", file=sys.stderr, disable=None):
        x, passes = decode(
            model,
            meta,
            tok.encode("", bos=True),
            args.length,
            vocab=tok.n_vocab,
            num_samples=min(args.batch_size, n - start),
            seed=mix(args.seed, start),
            sampling=Sampling(temperature=args.temperature, top_p=args.top_p),
            steps=steps,
            **decoding_options(args),
        )
        forwards += passes
        samples += [row[1:].tolist() for row in x]
    totals, counts, records = [], [], []
    for ids in samples:
        text = tok.decode(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids)
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
def is_greedy(model, meta, tok, x, maskable):
    """Whether x's maskable tokens (continuation_input) are the model's most probable: AR given the
    true prefix at every token; diffusion with the whole continuation masked, in one pass."""
    ar = meta["objective"] == "ar"
    inputs = x if ar else x.masked_fill(maskable, meta["mask_token_id"])
    where = predicting(maskable, ar or meta.get("shift", True))
    logits = valid_logits(
        model(inputs, attn="causal" if ar else "full", where=where), meta["mask_token_id"], tok.n_vocab
    )
    return bool((logits.argmax(-1) == x[maskable]).all())


def harness_model(model, meta, tok, args):
    """This checkpoint as an lm-evaluation-harness 0.4 model (defined here: lm-eval is optional)."""
    from lm_eval.api.model import LM

    class Model(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            """(log p(continuation | context), is_greedy): exact (AR), or --score official / elbo (diffusion)."""
            out = []
            for r in tqdm(requests, desc="loglikelihood", file=sys.stderr, disable=disable_tqdm or None):
                context, continuation = r.args
                x, maskable = continuation_input(model, tok, context, continuation, args.device)
                nll = score_continuation(model, meta, x, maskable, text_seed(args.seed, context, continuation), args)
                out.append((-nll, is_greedy(model, meta, tok, x, maskable)))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            """log p(text) in nats: exact (AR), or minus the ELBO with the shift (diffusion: a bound),
            over windows of the model's context, each window's first token the previous one's last."""
            out = []
            for r in tqdm(requests, desc="loglikelihood_rolling", file=sys.stderr, disable=disable_tqdm or None):
                ids, L = tok.encode(r.args[0], bos=True), model.cfg.block_size
                total = 0.0  # windows overlap by one token, the context of the next: every token is scored once
                for k, i in enumerate(range(0, len(ids) - 1, L - 1)):
                    x = torch.tensor([ids[i : i + L]], device=args.device)
                    maskable = torch.ones_like(x, dtype=torch.bool)
                    maskable[:, 0] = False
                    seed = mix(args.seed, zlib.crc32(r.args[0].encode()), k)
                    total += sequence_nll(model, meta, x, maskable, noise_levels(args.mc, seed=seed), seed)
                out.append(-total)
            return out

        def generate_until(self, requests, disable_tqdm=False):
            """This project's sampler (--strategy, --steps; greedy unless the task samples), cut at the stop strings."""
            out = []
            for k, r in enumerate(tqdm(requests, desc="generate_until", file=sys.stderr, disable=disable_tqdm or None)):
                context, options = r.args
                until = options.get("until") or []
                n = min(options.get("max_gen_toks", 256), model.cfg.block_size // 2)  # leave room for context
                prefix = fit_prompt(tok, tok.encode(context), model.cfg.block_size - n)
                temperature = options.get("temperature", 0.0)
                sampling = Sampling(
                    temperature=temperature or 1.0, greedy=not options.get("do_sample") or not temperature
                )
                x, _ = decode(
                    model,
                    meta,
                    prefix,
                    n,
                    vocab=tok.n_vocab,
                    sampling=sampling,
                    seed=mix(args.seed, k),
                    steps=args.steps or n,
                    **decoding_options(args),
                )
                ids = x[0, len(prefix) :].tolist()
                text = tok.decode(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids)
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
        raise UserError("--lm-eval needs lm-evaluation-harness: pip install 'lm-eval>=0.4,<0.5'") from None
    manager = TaskManager(include_path=str(args.include_path) if args.include_path else None)
    unknown = [t for t in args.lm_eval.split(",") if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"--lm-eval: no task named {', '.join(unknown)} (lm-eval's names; --include-path for your own)")
    return manager


TASKS = {"nll": task_nll, "lambada": task_lambada, "choice": task_choice, "infill": task_infill, "genppl": task_genppl}


def write_records(path, records):
    """One JSON line per item, written atomically."""
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    tmp.replace(path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    # what to evaluate
    a("--ckpt", required=True, type=Path, help="checkpoint directory (AR or diffusion)")
    a("--task", choices=sorted(TASKS), help="one of our tasks (see the module docstring)")
    a("--lm-eval", metavar="TASKS", help="lm-evaluation-harness tasks, comma-separated, instead of --task")
    a("--include-path", type=Path, help="--lm-eval: a folder of your own task YAMLs")
    a("--data", type=Path, help="the task's data file")
    a("--limit", type=int, default=0, help="evaluate only the first N items (windows for nll, samples for genppl)")
    a("--output", type=Path, help="also write one JSON line per item (window, sample) here")
    a("--seed", type=int, default=0, help="noise and sampling seed")
    # scoring
    a("--mc", type=int, default=32, help="noise levels: nll Monte Carlo samples; choice T (the paper: 32)")
    a("--t-grid", action="store_true", help="nll: a fixed grid of levels instead of Monte Carlo")
    a("--score", choices=["official", "elbo"], default="official", help="choice, diffusion: how a choice is scored")
    a("--block-size", type=int, default=0, help="nll window (default: the model's, at most 512)")
    # decoding
    a("--steps", type=int, default=0, help="decoding steps (infill: default the middle's length; genppl: --length)")
    a("--strategy", choices=STRATEGIES, default="confidence", help="diffusion decoding order (sample.py)")
    a("--greedy", action="store_true", help="lambada, infill: greedy decoding")
    a("--judge", type=Path, help="genppl: AR checkpoint that scores the samples")
    a("--length", type=int, default=128, help="genppl: tokens per sample")
    a("--temperature", type=float, default=1.0, help="genppl: sampling temperature")
    a("--top-p", type=float, default=1.0, help="genppl: nucleus sampling")
    a("--threshold", type=float, help="genppl, infill: parallel decoding threshold (sample.py)")
    a("--block-length", type=int, default=0, help="genppl, infill: semi-autoregressive blocks (sample.py)")
    a("--batch-size", type=int, default=8, help="genppl: samples decoded together")
    a("--cache", action="store_true", help="genppl, infill: approximate key/value cache (sample.py)")
    a("--device", default="auto", help="auto: CUDA when present, else the CPU; or cpu, cuda, cuda:N")
    a("--dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="auto: bf16 on a GPU, fp32 on CPU")
    args = p.parse_args(argv)
    if bool(args.task) == bool(args.lm_eval):
        raise UserError("give --task or --lm-eval (one of them)")
    if args.include_path and not args.include_path.is_dir():
        raise UserError(f"--include-path {args.include_path} is not a directory")
    if args.task not in (None, "genppl") and not args.data:
        raise UserError(f"--task {args.task} needs --data")
    if args.data and not args.data.is_file():
        raise UserError(f"--data {args.data} does not exist")
    if args.mc < 1 or args.limit < 0 or args.steps < 0 or args.length < 1 or args.batch_size < 1:
        raise UserError("--mc, --length and --batch-size must be at least 1; --limit and --steps not negative")
    args.device = pick_device(args.device)
    args.dtype = pick_dtype(args.dtype, args.device)
    return args


def main(argv=None):
    args = parse_args(argv)
    manager = harness_tasks(args) if args.lm_eval else None
    model, meta = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
    tok = load_tokenizer(args.ckpt, meta)
    if args.lm_eval:
        result, records = run_harness(model, meta, tok, args, manager)
    else:
        result, records = TASKS[args.task](model, meta, tok, args)
        result = {"task": args.task, **result}
    if args.output:
        write_records(args.output, records)
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
