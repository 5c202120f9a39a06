"""SmolLM2-135M adapted into a diffusion LM and a block-diffusion LM in minutes on one GPU: the method on a real
model at the scale of DiffuGPT-S's parent, next to that parent.

    python lab/smollm2.py --assets ../shared/assets                       # one H200: about 15 minutes
    python lab/smollm2.py --assets ../shared/assets --device cpu --minutes 0.5 \
        --batch-size 1 --block-size 128 --limit 4 --mc 2 --speed-tokens 8   # a CPU smoke test: a few minutes

From the offline assets (DIR/smollm2-135m/*.gguf, DIR/text/, DIR/eval/lambada_test.txt) it converts the GGUF
file, tokenizes TinyStories (all but the last --test-stories stories) and the C4 sample for training, then
adapts the AR parent three times, each for --minutes of wall clock (startup and torch.compile included): whole-sequence
diffusion (the paper), blocks of --diffusion-block tokens, and blocks of --speculative-block that keep the AR model
(train.py --ar-weight), whose drafts its AR mode verifies (sample.py --speculative). A run is stopped by SIGTERM at
its budget and saves, as under a cluster's scheduler; its learning rate is constant after warm-up, so a stop at any
step leaves no schedule unfinished. Then it prints, for the parent and the adaptations, the held-out NLL (exact for
AR, the ELBO bound for diffusion) on the last TinyStories stories and on the WikiText sample, and LAMBADA
accuracy (greedy, the whole word), each ± one standard error; and for the third, greedy self-speculative decoding
of 128 tokens after 8 held-out story openings against AR greedy, alone and batched. All go to --out/results.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import read_meta
from lab.common import read_as, run_script, speculation, stop_children_on_signals, story_prompts
from support.cli import COUNT, NON_NEGATIVE, POSITIVE, HelpFormatter, UserError, add_device_options, pick_device
from support.files import atomic_write, sole_writer

GGUF = "smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    a("--assets", type=Path, required=True, help="the offline assets: smollm2-135m/, text/, eval/")
    a("--out", type=Path, default=Path("runs/smollm2"), help="checkpoints, data and results.json")
    a("--minutes", type=POSITIVE, default=4.0, help="wall clock per adaptation")
    a("--diffusion-block", type=COUNT, default=32, help="the block-diffusion run's block size")
    a("--speculative-block", type=COUNT, default=4, help="the self-speculative run's block size (drafts: one less)")
    a("--ar-weight", type=POSITIVE, default=1.0, help="the self-speculative run's AR loss weight")
    a("--speed-tokens", type=COUNT, default=128, help="greedy tokens per prompt of the self-speculative timing")
    a("--lr", type=POSITIVE, default=1e-4, help="peak learning rate, constant after warm-up")
    a("--batch-size", type=COUNT, default=32, help="sequences per step")
    a("--block-size", type=COUNT, default=1024, help="tokens per sequence")
    a("--test-stories", type=COUNT, default=300, help="TinyStories stories held out for the NLL")
    a("--limit", type=NON_NEGATIVE, default=0, help="evaluate only the first N windows / passages (0: all)")
    a("--mc", type=COUNT, default=32, help="Monte Carlo noise levels per window of the diffusion NLL")
    add_device_options(p)
    args = p.parse_args(argv)
    pick_device(args.device)  # a device that is not there: said now, not after the conversion
    missing = [
        f
        for f in (GGUF, "text/tinystories_val.txt", "text/wiki_demo.txt", "text/c4_demo.json", "eval/lambada_test.txt")
        if not (args.assets / f).is_file()
    ]
    if missing:
        raise UserError(f"--assets {args.assets} lacks {', '.join(missing)}")
    if args.out.exists():
        raise UserError(f"--out {args.out} already exists: remove it, or pass another")
    return args


def main(argv=None):
    args = parse_args(argv)
    stop_children_on_signals()
    args.out.mkdir(parents=True)
    with sole_writer(args.out):
        parent = args.out / "smollm2"
        run_script("convert.py", args.assets / GGUF, parent)
        stories = (args.assets / "text" / "tinystories_val.txt").read_text().split("\n\n")
        (args.out / "train.txt").write_text("\n\n".join(stories[: -args.test_stories]))
        (args.out / "test.txt").write_text("\n\n".join(stories[-args.test_stories :]))
        data = args.out / "data"
        run_script(
            "data/prepare.py",
            args.out / "train.txt",
            args.assets / "text" / "c4_demo.json",
            tokenizer=parent,
            out=data,
            val_tokens="100K",
        )
        runs = {"SmolLM2-135M, AR parent": parent}
        spec = (
            f"blocks of {args.speculative_block}, AR weight {args.ar_weight}",
            args.speculative_block,
            args.ar_weight,
        )
        for name, block, ar_weight in [
            ("diffusion (the paper)", 0, 0),
            (f"blocks of {args.diffusion_block}", args.diffusion_block, 0),
            spec,
        ]:
            out = args.out / ("diffusion" if not block else f"blocks-{block}" + (f"-w{ar_weight}" if ar_weight else ""))
            started = time.time()
            run_script(
                "train.py",
                budget=args.minutes * 60,
                out_dir=out,
                init_from=parent,
                data_dir=data,
                objective="diffusion",
                diffusion_block=block,
                ar_weight=ar_weight,
                masked_blocks=0.5 if ar_weight else 0,
                max_iters=1_000_000,
                lr=args.lr,
                lr_schedule="constant",
                warmup_iters=100,
                anneal_steps=200 if not block else 0,
                batch_size=args.batch_size,
                block_size=args.block_size,
                eval_interval=100_000,
                device=args.device,
                dtype=args.dtype,
            )
            step = read_meta(out)["training"]["step"]
            runs[f"{name}, {step} steps in {(time.time() - started) / 60:.1f} min"] = out
            if ar_weight:  # and the AR mode it kept: the same weights, read causally
                read_as(out, args.out / f"{out.name}-as-ar", "ar")
                runs[f"{name}, its AR mode"] = args.out / f"{out.name}-as-ar"
        results = {}
        for name, ckpt in runs.items():
            common = dict(ckpt=ckpt, device=args.device, dtype=args.dtype, limit=args.limit)
            nll = dict(common, task="nll", mc=args.mc, block_size=args.block_size)  # windows as long as training's
            results[name] = {
                "tinystories": run_script("lab/eval.py", **nll, data=args.out / "test.txt"),
                "wikitext": run_script("lab/eval.py", **nll, data=args.assets / "text" / "wiki_demo.txt"),
                "lambada": run_script(
                    "lab/eval.py", **common, task="lambada", greedy=True, data=args.assets / "eval" / "lambada_test.txt"
                ),
            }
        prompts = story_prompts(parent, (args.out / "test.txt").read_text().split("\n\n"))
        speed = speculation(out, None, prompts, args.speed_tokens)  # the last run: the self-speculative one
        atomic_write(args.out / "results.json", json.dumps({**results, "speculative": speed}, indent=1))
        print("| model | NLL, TinyStories | NLL, WikiText | LAMBADA |\n|---|---|---|---|")
        for name, r in results.items():
            nll = lambda x: f"{'≤ ' if x['bound'] else ''}{x['nll']:.3f} ± {x['stderr']:.3f}"
            lambada = f"{r['lambada']['accuracy']:.3f} ± {r['lambada']['stderr']:.3f}"
            print(f"| {name} | {nll(r['tinystories'])} | {nll(r['wikitext'])} | {lambada} |")
        header = "tokens/s, AR | tokens/s, speculative | tokens/pass | accepted | lossless |"
        print(f"\n| greedy, {args.speed_tokens} tokens | {header}")
        print("|---|---|---|---|---|---|")
        for batch, r in speed.items():
            print(
                f"| {batch} | {r['ar_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} | {r['tokens_per_pass']:.2f} | "
                f"{r['accepted']:.2f} | {r['lossless']} |"
            )


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
