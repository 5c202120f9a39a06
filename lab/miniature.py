"""The paper in miniature: adapt the real stories260K LLaMA into a diffusion LM on a laptop CPU.

    python lab/miniature.py                    # downloads stories260K and TinyStories (about 10 minutes on 2 cores)
    python lab/miniature.py --assets DIR       # or DIFFU_ASSETS=DIR: local copies (DIR/stories260K/, DIR/text/)

One command, the paper's Table 3 ablation honestly measured at equal training tokens:
  AR NLL of stories260K (exact); the ELBO of the same weights read as a diffusion model before
  training; after adaptation (annealing + shift); without annealing; without shift; from scratch.
Then generation perplexity against decoding steps, judged by the AR model, and a few samples.
Everything lands in --out: checkpoints, results.json, results.md, loss.png.

    python lab/miniature.py --scaling [--quick]    # about 30 minutes on 2 cores (--quick: 5)

--scaling, the paper's headline in miniature: how the gap to the AR parent closes with adaptation
tokens. One adapted run and one from scratch, each evaluated at 1x, 2x, 4x and 8x --iters: the
held-out NLL bound against the AR parent's exact NLL, a story cloze (a held-out story's true last
sentence against another story's, the official choice score) and Gen PPL with sample.py's default
sampler, all with standard errors. The points are checkpoints of one long run per arm, resumed
from one point to the next (train.py resumes exactly); the learning rate is constant after
warm-up so that no point sits in a schedule's cool-down that a longer run would not have. Writes
scaling.png and results.md (a table) to --out.

    python lab/miniature.py --levers [ROWS]        # about 25 minutes: one run per lever of the recipe

--levers: the levers the paper and its peers use (lr, warm-up, annealing length, batch at equal
tokens, the shift, the mask token's embedding, the noise-level distribution), one run each at the
miniature's tokens, plus a second seed for the run-to-run spread; NLL bound and story cloze.
"""

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import load_checkpoint, read_meta
from data.download import cache_dir, download_file
from lab.common import read_as, run_script, sentences, speculation, stop_children_on_signals, story_prompts
from sample import Decoding, Sampling, Trained, generate
from support.cli import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, HelpFormatter, UserError, given_options
from support.files import atomic_write, sole_writer
from support.report import HAVE_MATPLOTLIB, plot_curves
from tokenizer import load_tokenizer

STORIES_URL = "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/"
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt"
RUNS = {  # name: (description, extra train.py options)
    "adapt": ("adapted: annealing + shift", {}),
    "no_anneal": ("adapted: no annealing", {"anneal_steps": 0}),
    "no_shift": ("adapted: no shift", {"no_shift": True}),
    "scratch": ("from scratch (random init)", {"reinit": True}),
}


def fetch_assets(args, cache):
    """-> (stories260K.bin, tok512.model, TinyStories text): local copies, or downloaded once into the cache."""
    root = args.assets or os.environ.get("DIFFU_ASSETS")
    if root:
        root = Path(root)
        files = (
            root / "stories260K/stories260K.bin",
            root / "stories260K/tok512.model",
            root / "text/tinystories_val.txt",
        )
        for f in files:
            if not f.is_file():
                raise UserError(f"--assets {root}: {f} is missing")
        return files, None
    try:
        for name in ("stories260K.bin", "tok512.model"):
            download_file(STORIES_URL + name, cache / name)
        download_file(TINYSTORIES_URL, cache / "TinyStories-valid.txt")
    except UserError as e:
        raise UserError(
            f"{e}. Offline? Pass --assets DIR (or set DIFFU_ASSETS) with local copies of "
            "stories260K/stories260K.bin, stories260K/tok512.model and text/tinystories_val.txt"
        ) from None
    return (cache / "stories260K.bin", cache / "tok512.model", cache / "TinyStories-valid.txt"), "<|endoftext|>"


def split_stories(text_file, separator, out, n_test):
    """Held-out test stories (for the table) and the rest (for training), as blank-line separated text."""
    text = text_file.read_text(encoding="utf-8")
    stories = [s.strip() for s in (text.split(separator) if separator else text.split("\n\n")) if s.strip()]
    stories = [" ".join(s.split("\n")) for s in stories]  # one story, one paragraph
    (out / "train.txt").write_text("\n\n".join(stories[:-n_test]) + "\n")
    (out / "test.txt").write_text("\n\n".join(stories[-n_test:]) + "\n")
    return stories[-n_test:]


def evaluate(**options):
    return run_script("lab/eval.py", **options)


def main(argv=None):
    args = parse_args(argv)
    command = {k: str(v) for k, v in vars(args).items() if k not in ("out", "force")}  # what decides the results
    continuing = check_out(args, command)
    (stories_bin, tokenizer_model, text), separator = fetch_assets(args, cache_dir() / "miniature")
    stop_children_on_signals()
    with sole_writer(args.out):  # this process is --out's one writer
        if not continuing:
            shutil.rmtree(args.out, ignore_errors=True)
            args.out.mkdir(parents=True)
        journal = Journal(args.out / JOURNAL, command)

        # the AR model as a checkpoint, and TinyStories split into training text and held-out stories
        progress("converting stories260K and tokenizing TinyStories")
        base, test = args.out / "stories260K", args.out / "test.txt"
        journal.run("convert", "convert.py", stories_bin, base, tokenizer=tokenizer_model, outputs=[base])
        test_stories = journal.step("split", lambda: split_stories(text, separator, args.out, args.test_stories))
        data = args.out / "data"
        journal.run(
            "prepare", "data/prepare.py", args.out / "train.txt", tokenizer=base, out=data, workers=1, outputs=[data]
        )

        # the NLL column: the AR model, the same weights read as diffusion, then one training run per setting
        nll = lambda ckpt: journal.run(
            f"nll {ckpt.name}",
            "lab/eval.py",
            ckpt=ckpt,
            task="nll",
            data=test,
            mc=args.mc,
            block_size=args.block_size,
            limit=args.eval_windows,
        )
        if args.scaling:
            return scaling(args, journal, base, nll, test_stories)
        if args.levers:
            return levers(args, journal, base, nll, test_stories, (stories_bin, tokenizer_model))
        if args.blocks:
            return block_sizes(args, journal, base, nll, test_stories)
        if args.speculative:
            return speculative(args, journal, base, nll, test_stories)
        progress("NLL of the AR model, and of its weights read as a diffusion model")
        rows = [("stories260K, AR (exact NLL)", nll(base))]
        as_diffusion = args.out / "stories260K-as-diffusion"  # the same weights, read with full attention and masks
        journal.step("as diffusion", lambda: read_as(base, as_diffusion, "diffusion"), as_diffusion)
        rows.append(("AR weights as diffusion, before training", nll(as_diffusion)))
        common = dict(**recipe(args), init_from=base, max_iters=args.iters)
        curves = {}
        for name, (description, extra) in RUNS.items():
            progress(f"training: {description} ({args.iters} steps), then its NLL")
            train(journal, args.out / name, **{**common, **extra})
            rows.append((description, nll(args.out / name)))
            curves[description] = [
                json.loads(line) for line in (args.out / name / "metrics.jsonl").read_text().splitlines()
            ]

        # the Gen PPL column: unconditional samples judged by the AR model, against decoding steps
        progress("Gen PPL of unconditional samples, judged by stories260K")
        genppl = dict(task="genppl", judge=base, length=args.gen_length, limit=args.gen_samples)
        gen = []
        for strategy in ("random", "confidence"):
            for steps in args.gen_steps:
                result = journal.run(
                    f"genppl {strategy} {steps}",
                    "lab/eval.py",
                    ckpt=args.out / "adapt",
                    steps=steps,
                    strategy=strategy,
                    **genppl,
                )
                gen.append({**result, "strategy": strategy})
        ar_gen = journal.run("genppl AR", "lab/eval.py", ckpt=base, **genppl)

        samples = journal.step("samples", lambda: show_samples(args.out / "adapt", test_stories[0]))
        table = results_table(rows, gen, ar_gen, samples, curves[RUNS["adapt"][0]][-1]["tokens"], args)
        (args.out / "results.md").write_text(table + "\n")
        results = {
            "nll": dict(rows),
            "genppl": gen,
            "ar_genppl": ar_gen,
            "samples": samples,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        if HAVE_MATPLOTLIB:
            bounds = {d: ([m["tokens"] for m in ms], [m["val_nll_bound"] for m in ms]) for d, ms in curves.items()}
            plot_curves(
                bounds, args.out / "loss.png", "val NLL bound (nats/token)", "Adapting stories260K into a diffusion LM"
            )
        print("\n" + table)
        return rows


# ---------------------------------------------------------------------------------------------
# A run that resumes: --out's journal of finished steps


JOURNAL = "journal.json"


def check_out(args, command):
    """-> whether --out holds a run of this same command to continue. A new or empty --out starts; --force
    starts over (a miniature's own folder only); a run of another command is refused, naming the difference."""
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")
    if not args.out.exists() or not any(args.out.iterdir()):
        return False
    if not (args.out / JOURNAL).is_file():
        raise UserError(f"{args.out} is not a lab/miniature.py output: refusing to write into it")
    if args.force:
        return False
    try:
        ran = json.loads((args.out / JOURNAL).read_text())["command"]
    except (ValueError, KeyError, TypeError) as e:  # a journal edited or cut short by hand
        raise UserError(f"{args.out / JOURNAL} cannot be read ({e}): pass --force to start over") from None
    changed = [f"{k} {ran.get(k)} there, {v} here" for k, v in command.items() if ran.get(k) != v]
    if changed:
        raise UserError(
            f"{args.out} holds a run of another command ({'; '.join(changed)}): rerun that command to continue it, "
            "or pass --force to start over"
        )
    print(f"miniature: continuing the run in {args.out}", flush=True)
    return True


class Journal:
    """The command whose run --out holds, and each finished step's result (as JSON). A rerun of the same
    command returns the recorded results and redoes only what was not finished."""

    def __init__(self, file, command):
        self.file, self.command = file, command
        self.steps = json.loads(file.read_text())["steps"] if file.is_file() else {}
        self.save()

    def step(self, name, work, *outputs):
        """work()'s result, computed once; an unfinished attempt's `outputs` are removed before it is redone."""
        if name not in self.steps:
            for path in outputs:
                shutil.rmtree(path, ignore_errors=True)
            self.steps[name] = json.loads(json.dumps(work()))  # the same values as a rerun reads back
            self.save()
        return self.steps[name]

    def run(self, name, script, *positional, outputs=(), **options):
        """run_script(script, ...)'s result, once."""
        return self.step(name, lambda: run_script(script, *positional, **options), *outputs)

    def save(self):
        atomic_write(self.file, json.dumps({"command": self.command, "steps": self.steps}, indent=1))


def train(journal, run, **options):
    """train.py into `run` to options["max_iters"] steps, once. An interrupted attempt, or an earlier point of
    the same run, is continued with --init-from resume (train.py resumes exactly); a finished one is kept."""

    def work():
        if not (run / "train_state.pt").is_file():
            return run_script("train.py", **options, out_dir=run)
        if read_meta(run)["training"]["step"] < options["max_iters"]:
            return run_script("train.py", **{**options, "init_from": "resume"}, out_dir=run)

    return journal.step(f"train {run.name} to {options['max_iters']}", work)


def recipe(args):
    """The miniature's train.py options (cosine lr after a 5% warm-up; 6 evaluations per run)."""
    return dict(
        data_dir=args.out / "data",
        batch_size=args.batch_size,
        block_size=args.block_size,
        lr=args.lr,
        warmup_iters=max(1, args.iters // 20),
        anneal_steps=args.anneal_steps,
        eval_interval=max(1, args.iters // 6),
        eval_iters=8,
    )


def measurer(args, journal, base, nll, test_stories, genppl=True):
    """-> (measure(ckpt): its NLL, story-cloze accuracy and Gen PPL with sample.py's defaults; cloze items)."""
    cloze = args.out / "cloze.jsonl"
    items = cloze_items(test_stories, cloze)
    sampler = dict(task="genppl", judge=base, length=args.gen_length, limit=args.gen_samples, temperature=0.95)
    sampler.update(top_p=0.9, steps=min(64, args.gen_length))  # sample.py's defaults

    def measure(ckpt):
        result = {
            "nll": nll(ckpt),
            "cloze": journal.run(f"cloze {ckpt.name}", "lab/eval.py", ckpt=ckpt, task="choice", data=cloze),
        }
        if genppl:
            result["genppl"] = journal.run(f"genppl {ckpt.name}", "lab/eval.py", ckpt=ckpt, **sampler)
        return result

    return measure, items


def scaling(args, journal, base, nll, test_stories):
    """--scaling: adapted and from-scratch runs evaluated at each of --points times --iters steps."""
    measure, items = measurer(args, journal, base, nll, test_stories)
    progress(f"the AR parent: exact NLL, story cloze ({len(items)} items), Gen PPL")
    ar = measure(base)
    common = {**recipe(args), "lr_schedule": "constant", "eval_interval": args.iters}
    points = []
    for arm, extra in (("adapted", {}), ("scratch", {"reinit": True})):
        run = args.out / arm
        for k in sorted(set(args.points)):
            progress(f"{arm}: training to {k}x ({k * args.iters} steps), then measuring")
            train(journal, run, **common, init_from=base, **extra, max_iters=k * args.iters)
            point = args.out / f"{arm}-{k}x"
            journal.step(f"copy {point.name}", lambda src=run, dst=point: str(shutil.copytree(src, dst)), point)
            tokens = json.loads((point / "metrics.jsonl").read_text().splitlines()[-1])["tokens"]
            points.append({"arm": arm, "times": k, "tokens": tokens, **measure(point)})
    table = scaling_table(ar, points, len(items), args)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"ar": ar, "points": points}, indent=2))
    if HAVE_MATPLOTLIB:
        plot_scaling(ar, points, args.out / "scaling.png")
    print("\n" + table)
    return points


LEVERS = {  # name: the options that change, given the miniature's; mask_init goes to convert.py, the rest to train.py
    "the miniature's recipe": lambda a: {},
    "the same, seed 1": lambda a: {"seed": 1},
    "half the lr": lambda a: {"lr": a.lr / 2},
    "twice the lr": lambda a: {"lr": 2 * a.lr},
    "warm-up 20% of the steps": lambda a: {"warmup_iters": a.iters // 5},
    "no annealing": lambda a: {"anneal_steps": 0},
    "annealing over the whole run": lambda a: {"anneal_steps": a.iters},
    "twice the batch, half the steps": lambda a: {"batch_size": 2 * a.batch_size, "max_iters": a.iters // 2},
    "half the batch, twice the steps": lambda a: {"batch_size": a.batch_size // 2, "max_iters": 2 * a.iters},
    "no shift": lambda a: {"no_shift": True},
    "mask token: noisy mean (official)": lambda a: {"mask_init": "noisy-mean"},
    "stratified noise levels": lambda a: {"t_sampling": "stratified"},
}


def levers(args, journal, base, nll, test_stories, sources):
    """--levers: one adaptation run per chosen LEVERS row, the recipe's first; NLL bound and story cloze."""
    measure, items = measurer(args, journal, base, nll, test_stories, genppl=False)
    progress(f"the AR parent: exact NLL and story cloze ({len(items)} items)")
    ar = measure(base)
    rows = []
    for k in dict.fromkeys([0, *args.levers]):  # the recipe's row first: the others are measured against it
        name, change = list(LEVERS.items())[k]
        options = {**recipe(args), "init_from": base, "max_iters": args.iters, **change(args)}
        if "mask_init" in options:  # a base of its own
            init = args.out / f"stories260K-{options['mask_init']}"
            mask_init = options.pop("mask_init")
            journal.run(
                f"convert {init.name}",
                "convert.py",
                *sources[:1],
                init,
                tokenizer=sources[1],
                mask_init=mask_init,
                outputs=[init],
            )
            options["init_from"] = init
        progress(f"lever: {name}")
        run = args.out / f"lever-{len(rows)}"
        train(journal, run, **options)
        rows.append({"lever": name, "options": change(args), **measure(run)})
    table = levers_table(ar, rows, len(items), args)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"ar": ar, "levers": rows}, indent=2))
    print("\n" + table)
    return rows


def block_sizes(args, journal, base, nll, test_stories):
    """--blocks: one adaptation per block size at the miniature's tokens, against the AR parent: NLL bound, story
    cloze, Gen PPL one token per step and with the threshold, forward passes per token and tokens/s."""
    measure, items = measurer(args, journal, base, nll, test_stories, genppl=False)
    progress(f"the AR parent: exact NLL, story cloze ({len(items)} items), Gen PPL, speed")
    length = args.gen_length
    genppl = dict(task="genppl", judge=base, length=length, limit=args.gen_samples, steps=length, batch_size=8)
    rows = [{"model": "stories260K, AR parent", **measure(base)}]
    rows[0]["genppl exact"] = journal.run("genppl exact AR", "lab/eval.py", ckpt=base, **genppl)
    rows[0]["speed exact"] = journal.step("speed AR", lambda: speed(base, length))
    for block in args.blocks:
        name = f"blocks of {block}" if block else f"whole sequence ({args.block_size}, the paper)"
        progress(f"adapting with {name}, then measuring")
        run = args.out / f"blocks-{block}"
        train(journal, run, **recipe(args), init_from=base, max_iters=args.iters, diffusion_block=block)
        row = {"model": name, **measure(run)}
        for how, threshold in (("exact", None), ("threshold", args.threshold)):
            extra = {"threshold": threshold} if threshold else {}
            row[f"genppl {how}"] = journal.run(f"genppl {how} {run.name}", "lab/eval.py", ckpt=run, **genppl, **extra)
            timing = lambda ckpt=run, t=threshold: speed(ckpt, length, t)
            row[f"speed {how}"] = journal.step(f"speed {how} {run.name}", timing)
        rows.append(row)
    table = blocks_table(rows, len(items), args)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"rows": rows}, indent=2))
    print("\n" + table)
    return rows


SPECULATIVE = {  # name: train.py options of a block-diffusion run with blocks of 4 (drafts of 3 tokens)
    "W = 0, verified by the parent": {"ar_weight": 0, "masked_blocks": 0.5},
    "W = 0.5": {"ar_weight": 0.5, "masked_blocks": 0.5},
    "W = 1": {"ar_weight": 1, "masked_blocks": 0.5},
    "W = 2": {"ar_weight": 2, "masked_blocks": 0.5},
    "W = 1, t ~ U(ε, 1) per block": {"ar_weight": 1, "masked_blocks": 0},
    "W = 1, every block wholly masked (TiDAR)": {"ar_weight": 1, "masked_blocks": 1},
}


def speculative(args, journal, base, nll, test_stories):
    """--speculative: one adaptation with blocks of 4 per AR weight W (and two ways of noising the drafts), each
    with its AR mode's exact NLL, its block ELBO, and greedy self-speculative decoding against AR greedy."""
    progress("the AR parent, and the AR objective on the same tokens (what the data alone does): exact NLL")
    parent = nll(base)
    control = args.out / "ar-same-tokens"
    ar_recipe = {k: v for k, v in recipe(args).items() if k != "anneal_steps"}  # AR training has no annealing
    train(journal, control, **ar_recipe, init_from=base, max_iters=args.iters, objective="ar")
    prompts = journal.step("prompts", lambda: story_prompts(base, test_stories))
    rows = [{"name": "AR objective, the same tokens", "ar_nll": nll(control)}]
    for name, extra in SPECULATIVE.items():
        progress(f"adapting with blocks of 4, {name}, then measuring")
        run = args.out / f"spec-w{extra['ar_weight']}-m{extra['masked_blocks']}"
        train(journal, run, **recipe(args), init_from=base, max_iters=args.iters, diffusion_block=4, **extra)
        as_ar = args.out / f"{run.name}-as-ar"
        journal.step(f"as AR {run.name}", lambda r=run, a=as_ar: read_as(r, a, "ar"), as_ar)
        verifier = base if not extra["ar_weight"] else None
        timing = lambda r=run, v=verifier: speculation(r, v, prompts, args.gen_length)
        row = {"name": name, "ar_nll": nll(as_ar), "elbo": nll(run), "speed": journal.step(f"speed {run.name}", timing)}
        rows.append(row)
    table = speculative_table(parent, rows, args)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"parent": parent, "rows": rows}, indent=2))
    print("\n" + table)
    return rows


def speculative_table(parent, rows, args):
    lines = [
        f"Self-speculative decoding of stories260K adapted with blocks of 4 (drafts of 3 tokens): {args.iters} steps "
        f"× {args.batch_size} × {args.block_size} tokens per run, the miniature's recipe. AR-mode NLL: exact, on "
        f"{parent['tokens']:,} held-out tokens; block ELBO: the bound of the same text. Speed: greedy, "
        f"{args.gen_length} tokens after each of 8 held-out story openings, alone (b1) and in one batch (b8), "
        "against AR greedy run beside it on this CPU; tokens per pass per row. ± one standard error.",
        "",
        "| run | AR-mode NLL | gap to parent | block ELBO | accepted of 3 (b1) | tokens/pass (b1 / b8) "
        "| tokens/s vs AR (b1) | (b8) | lossless |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| stories260K, AR parent | {with_error(parent['nll'], parent['stderr'])} | 0 | | | 1 | 1.00× | 1.00× | |",
    ]
    for r in rows:
        gap, se = nll_difference({"nll": parent}, {"nll": r["ar_nll"]})
        if "speed" not in r:  # the AR control
            nll = with_error(r["ar_nll"]["nll"], r["ar_nll"]["stderr"])
            lines.append(f"| {r['name']} | {nll} | {with_error(gap, se)} | | | 1 | | | |")
            continue
        s1, s8 = r["speed"]["b1"], list(r["speed"].values())[-1]
        lines.append(
            f"| {r['name']} | {with_error(r['ar_nll']['nll'], r['ar_nll']['stderr'])} | {with_error(gap, se)} | "
            f"≤ {with_error(r['elbo']['nll'], r['elbo']['stderr'])} | {s1['accepted']:.2f} | "
            f"{s1['tokens_per_pass']:.2f} / {s8['tokens_per_pass']:.2f} | "
            f"{s1['tokens_per_s'] / s1['ar_tokens_per_s']:.2f}× | {s8['tokens_per_s'] / s8['ar_tokens_per_s']:.2f}× | "
            f"{'yes' if s1['lossless'] and s8['lossless'] else 'NO'} |"
        )
    return "\n".join(lines)


def speed(ckpt, length, threshold=None, samples=8):
    """Decoding speed of one batch of `samples` unconditional samples -> {tokens_per_s, passes_per_token}:
    one token per step (greedy), or with the threshold; AR checkpoints sample with their KV cache."""
    from sample import decode

    model, meta = load_checkpoint(ckpt)
    decoding = Decoding(length, "confidence", Sampling(greedy=True), threshold)
    rows, seeds = [(load_tokenizer(ckpt, meta).encode("", bos=True), [])] * samples, list(range(samples))
    decode(model, Trained.of(meta), rows[:1], 4, decoding, seeds=seeds[:1])  # warm-up
    t0 = time.perf_counter()
    out, passes, _ = decode(model, Trained.of(meta), rows, length, decoding, seeds=seeds)
    elapsed, tokens = time.perf_counter() - t0, sum(map(len, out))
    return {"tokens_per_s": tokens / elapsed, "passes_per_token": passes / (tokens / samples)}


def blocks_table(rows, n_items, args):
    ar = rows[0]
    lines = [
        f"Block diffusion adapted from stories260K: {args.iters} steps × {args.batch_size} × {args.block_size} tokens "
        f"per run (the miniature's recipe); held-out NLL on {ar['nll']['tokens']:,} tokens (a bound for diffusion), "
        f"story cloze on {n_items} items (official score), Gen PPL of {args.gen_samples} unconditional "
        f"{args.gen_length}-token samples judged by stories260K: one token per step, and with --threshold "
        f"{args.threshold}. Speed: a batch of 8 greedy samples on this CPU, forward passes per generated token "
        "(a batch's pass counts once). ± one standard error.",
        "",
        "| model | NLL | gap to AR | cloze | Gen PPL (1/step) | distinct-2 | Gen PPL (threshold) | passes/token "
        "(1/step, threshold) | tokens/s (1/step, threshold) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap, se = nll_difference(ar, r)
        bound = "≤ " if r["nll"]["bound"] else ""
        exact, fast = r["genppl exact"], r.get("genppl threshold")
        speeds = [r["speed exact"], r.get("speed threshold")]
        cloze = with_error(r["cloze"]["accuracy"], r["cloze"]["stderr"])
        lines.append(
            f"| {r['model']} | {bound}{with_error(r['nll']['nll'], r['nll']['stderr'])} | "
            f"{with_error(gap, se) if r is not ar else 0} | {cloze} | "
            f"{with_error(exact['gen_ppl'], exact['stderr'], 1)} | {exact['distinct2']:.2f} | "
            + (f"{with_error(fast['gen_ppl'], fast['stderr'], 1)} | " if fast else " | ")
            + " / ".join(f"{s['passes_per_token']:.2f}" for s in speeds if s)
            + " | "
            + " / ".join(f"{s['tokens_per_s']:,.0f}" for s in speeds if s)
            + " |"
        )
    return "\n".join(lines)


def levers_table(ar, rows, n_items, args):
    base = rows[0]
    lines = [
        f"Levers of the adaptation recipe on stories260K, each one run of {args.iters} steps × {args.batch_size} × "
        f"{args.block_size} tokens changing one thing (lr {args.lr} cosine, warm-up {max(1, args.iters // 20)}, "
        f"annealing {args.anneal_steps}). Held-out NLL on {ar['nll']['tokens']:,} tokens; story cloze on "
        f"{n_items} items (official score); ± one standard error of the evaluation. The change against the first "
        "row is on the same windows and items; its ± adds the two errors in quadrature.",
        "",
        "| lever | NLL bound | gap to AR | Δ NLL vs recipe | cloze accuracy |",
        "|---|---|---|---|---|",
        f"| stories260K, AR (exact) | {with_error(ar['nll']['nll'], ar['nll']['stderr'])} | 0 | | "
        f"{with_error(ar['cloze']['accuracy'], ar['cloze']['stderr'])} |",
    ]
    for r in rows:
        gap, se = nll_difference(ar, r)
        delta, delta_se = nll_difference(base, r)
        lines.append(
            f"| {r['lever']} | ≤ {with_error(r['nll']['nll'], r['nll']['stderr'])} | {with_error(gap, se)} | "
            f"{with_error(delta, delta_se) if r is not base else ''} | "
            f"{with_error(r['cloze']['accuracy'], r['cloze']['stderr'])} |"
        )
    return "\n".join(lines)


def cloze_items(stories, path, seed=0):
    """A story cloze from held-out stories: the story without its last sentence as context, then its true
    last sentence or that of the story half the list away (the offline TinyStories file separates paragraphs,
    so a neighbour is often the same story), in a seeded order. Written as --task choice JSON lines."""
    split = [sentences(story) for story in stories]
    split = [s for s in split if len(s) >= 2]
    rng, items = random.Random(seed), []
    for k, parts in enumerate(split):
        true, other = parts[-1], split[(k + len(split) // 2) % len(split)][-1]  # far away: never a neighbour
        if true == other:
            continue
        label = rng.randrange(2)
        choices = [true, other] if label == 0 else [other, true]
        items.append({"context": " ".join(parts[:-1]), "choices": choices, "label": label})
    if not items:
        raise UserError("the held-out stories give no cloze item (raise --test-stories)")
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return items


def with_error(value, stderr, digits=3):
    return f"{value:.{digits}f} ± {stderr:.{digits}f}" if stderr is not None else f"{value:.{digits}f}"


def scaling_table(ar, points, n_items, args):
    ar_nll = ar["nll"]
    lines = [
        f"Adaptation of stories260K against training from scratch, {args.iters} steps × {args.batch_size} × "
        f"{args.block_size} tokens per 1x; held-out NLL on {ar_nll['tokens']:,} tokens, story cloze on {n_items} "
        f"items (official score, T = 32), Gen PPL of {args.gen_samples} unconditional {args.gen_length}-token "
        "samples (sample.py's defaults) judged by stories260K. ± one standard error; the gap's adds the two in "
        "quadrature (the same windows: conservative).",
        "",
        "| model | tokens | NLL (nats/token) | gap to AR | cloze accuracy | Gen PPL | distinct-2 |",
        "|---|---|---|---|---|---|---|",
        f"| stories260K, AR (exact) | | {with_error(ar_nll['nll'], ar_nll['stderr'])} | 0 | "
        f"{with_error(ar['cloze']['accuracy'], ar['cloze']['stderr'])} | "
        f"{with_error(ar['genppl']['gen_ppl'], ar['genppl']['stderr'], 1)} | {ar['genppl']['distinct2']:.2f} |",
    ]
    for p in points:
        gap, se = nll_difference(ar, p)
        lines.append(
            f"| {p['arm']}, {p['times']}x | {p['tokens']:,} | ≤ {with_error(p['nll']['nll'], p['nll']['stderr'])} | "
            f"{with_error(gap, se)} | {with_error(p['cloze']['accuracy'], p['cloze']['stderr'])} | "
            f"{with_error(p['genppl']['gen_ppl'], p['genppl']['stderr'], 1)} | {p['genppl']['distinct2']:.2f} |"
        )
    return "\n".join(lines)


def nll_difference(reference, point):
    """(point's NLL - the reference's, its standard error: the two in quadrature). Against the AR
    parent: the gap to AR; against the recipe's run: what a lever changed."""
    a, b = reference["nll"], point["nll"]
    return b["nll"] - a["nll"], ((a["stderr"] or 0) ** 2 + (b["stderr"] or 0) ** 2) ** 0.5


def plot_scaling(ar, points, path):
    """scaling.png: the gap to AR and the cloze accuracy against training tokens (log axis), per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for arm in dict.fromkeys(p["arm"] for p in points):
        mine = [p for p in points if p["arm"] == arm]
        tokens = [p["tokens"] for p in mine]
        gaps = [nll_difference(ar, p) for p in mine]
        left.errorbar(tokens, [g for g, _ in gaps], yerr=[se for _, se in gaps], marker="o", capsize=3, label=arm)
        accuracy = [p["cloze"]["accuracy"] for p in mine]
        right.errorbar(tokens, accuracy, yerr=[p["cloze"]["stderr"] for p in mine], marker="o", capsize=3, label=arm)
    right.axhline(ar["cloze"]["accuracy"], color="k", linestyle="--", label="AR parent")
    right.axhline(0.5, color="gray", linestyle=":", label="chance")
    left.set(xscale="log", xlabel="training tokens", ylabel="NLL bound - AR NLL (nats/token)", title="gap to AR")
    right.set(xscale="log", xlabel="training tokens", ylabel="accuracy", title="story cloze")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def progress(message):
    """Standard output is these lines and the final table; the scripts it runs report on standard error."""
    print(f"miniature: {message}", flush=True)


def show_samples(ckpt, story):
    """A continuation of "Once upon a time" and the infilled second sentence of a held-out story."""
    model, meta = load_checkpoint(ckpt)
    tok = load_tokenizer(ckpt, meta)
    samples = []
    parts = sentences(story)
    for prompt, suffix in [("Once upon a time", ""), (parts[0], " " + " ".join(parts[2:]))]:
        n = 24 if suffix else 48
        decoding = Decoding(n, "confidence", Sampling(top_p=0.9))
        prefix, suffix_ids = tok.encode(prompt, bos=True), tok.encode(suffix)
        x, _ = generate(
            model, prefix, n, decoding, Trained(meta["mask_token_id"], vocab=tok.n_vocab), suffix=suffix_ids
        )
        text = tok.decode([i for i in x[0].tolist() if i != tok.bos_id])
        samples.append({"prompt": prompt, "suffix": suffix, "text": text})
    return samples


def results_table(rows, gen, ar_gen, samples, tokens, args):
    bound = lambda r: "≤ " if r["bound"] else ""
    lines = [
        f"Adaptation of stories260K on TinyStories: {tokens:,} training tokens per run "
        f"({args.iters} steps × {args.batch_size} × {args.block_size}), "
        f"test NLL on {rows[0][1]['tokens']:,} held-out tokens.",
        "",
        "| model | NLL (nats/token) | PPL |",
        "|---|---|---|",
    ]
    lines += [f"| {d} | {bound(r)}{r['nll']:.3f} | {bound(r)}{r['ppl']:.1f} |" for d, r in rows]
    lines += [
        "",
        f"Generation perplexity of {args.gen_samples} unconditional {args.gen_length}-token samples, "
        "judged by stories260K:",
        "",
        "| decoder | steps | Gen PPL | distinct-2 |",
        "|---|---|---|---|",
    ]
    for g in gen:
        lines.append(
            f"| diffusion (adapted), {g['strategy']} | {g['steps']} | {g['gen_ppl']:.1f} | {g['distinct2']:.3f} |"
        )
    lines += [
        f"| stories260K, AR sampling | {args.gen_length} | {ar_gen['gen_ppl']:.1f} | {ar_gen['distinct2']:.3f} |",
        "",
    ]
    lines += [f"Sample ({'infill' if s['suffix'] else 'prefix'}): {s['text']}" for s in samples]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    a("--out", type=Path, default=Path("runs/miniature"), help="folder for the runs and results.md")
    a("--assets", type=Path, help="local copies of stories260K/ and text/tinystories_val.txt (env DIFFU_ASSETS)")
    a("--iters", type=COUNT, default=600, help="training steps per run")
    a("--batch-size", type=COUNT, default=8, help="sequences per step")
    a("--block-size", type=COUNT, default=256, help="tokens per sequence")
    a("--lr", type=POSITIVE, default=2e-3, help="peak learning rate (cosine; the levers study: 2e-3 beats 1e-3)")
    a("--anneal-steps", type=NON_NEGATIVE, default=150, help="attention-mask annealing steps of the annealed runs")
    a("--test-stories", type=COUNT, default=200, help="held-out stories for the NLL")
    a("--eval-windows", type=COUNT, default=40, help="512-token windows of test text for the NLL column")
    a("--mc", type=COUNT, default=8, help="Monte Carlo noise levels per window for the ELBO")
    a("--gen-steps", type=counts, default="8,16,32,64", help="decoding steps for the Gen PPL column")
    a("--gen-samples", type=COUNT, default=16, help="unconditional samples per Gen PPL cell")
    a("--gen-length", type=COUNT, default=64, help="tokens per sample")
    a("--force", action="store_true", help="start over if --out exists")
    a("--scaling", action="store_true", help="the gap to AR against training tokens, adapted vs from scratch")
    a("--points", type=counts, default="1,2,4,8", help="--scaling: evaluate at these multiples of --iters")
    a("--quick", action="store_true", help="--scaling in about 5 minutes: --iters 50, fewer test items")
    a(
        "--blocks",
        type=sizes,
        nargs="?",
        const="4,16,64,0",
        help="block diffusion: one adaptation per block size (0: the whole sequence, the paper), and the AR parent",
    )
    a("--threshold", type=PROBABILITY, default=0.9, help="--blocks: the parallel decoding threshold of its speed rows")
    a("--speculative", action="store_true", help="blocks of 4 per AR weight: self-speculative decoding against AR")
    a(
        "--levers",
        nargs="?",
        const="all",
        help="one run per lever of the recipe (lr, warm-up, annealing, batch, "
        "...); or only these rows of LEVERS (lab/miniature.py), comma-separated",
    )
    args = p.parse_args(argv)
    if args.quick and not args.scaling:
        raise UserError("--quick goes with --scaling")
    if args.blocks and max(args.blocks) >= args.block_size:  # train.py would read it as 0: a second whole-sequence row
        raise UserError(
            f"--blocks {max(args.blocks)}: a block must be shorter than --block-size {args.block_size} (0: all of it)"
        )
    if sum([args.scaling, args.levers is not None, args.blocks is not None, args.speculative]) > 1:
        raise UserError("--scaling, --levers, --blocks and --speculative are studies: run them one at a time")
    if args.levers is not None:
        given = range(len(LEVERS)) if args.levers == "all" else args.levers.split(",")
        try:
            args.levers = [int(k) for k in given]
        except ValueError:
            args.levers = [-1]
        if not all(0 <= k < len(LEVERS) for k in args.levers):
            raise UserError(f"--levers: row numbers 0 to {len(LEVERS) - 1}, comma-separated")
    if args.quick:  # defaults only: a value given on the command line stays
        quick = {"iters": 50, "test_stories": 100, "eval_windows": 20, "gen_samples": 16}
        given = given_options(p, argv)
        for k, v in quick.items():
            if k not in given:
                setattr(args, k, v)
    return args


def sizes(text):
    """'4,16,0' -> [4, 16, 0] (an argparse type: block sizes of at least 0, comma-separated)."""
    values = [int(k) for k in text.split(",") if k.strip().isdigit()]
    if len(values) != len(text.split(",")):
        raise argparse.ArgumentTypeError(f"must be integers of at least 0, comma-separated, got {text!r}")
    return values


def counts(text):
    """'1,2,4' -> [1, 2, 4] (an argparse type: integers of at least 1, comma-separated)."""
    values = [int(k) for k in text.split(",") if k.strip().isdigit()]
    if len(values) != len(text.split(",")) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be integers of at least 1, comma-separated, got {text!r}")
    return values


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
