"""Speed, measured side by side in one run: ratios, not absolute numbers, are what carry across machines.

    python lab/bench.py                                  # CPU suite (GPT-2-small shape; a few minutes)
    python lab/bench.py --suite tiny                     # seconds: the tests run this
    python lab/bench.py --device cuda --suite gpu        # H100/H200: bf16, torch.compile, FlexAttention
    python lab/bench.py --skip train,decode,batched --decode-ckpt ckpt/smollm2   # on a real model's weights
    python lab/bench.py --skip train,decode --quality-ckpt runs/miniature/adapt --judge runs/miniature/stories260K \
        --quality-data runs/miniature/test.txt

Training: tokens/s and MFU (against a matmul peak measured in this run) of one optimizer step,
for diffusion training during annealing and after it, and for AR training; beside the same step
done the way the official DiffuGPT code does it: transformers' GPT2LMHeadModel given a dense 4D
additive float mask from the annealing rule, computing logits at every position.

Decoding: tokens/s of our exact sampler per strategy, of the official-style loop (the same
transformers model, every position's logits at every step), of AR decoding with a KV cache, and of
the approximate options (--cache, --threshold, blocks). --quality-ckpt measures what the approximate
options cost in generation perplexity and infill ROUGE against the exact sampler.
"""

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import load_checkpoint, read_meta
from formats.hf import hf_twin
from lab.common import run_script
from model import ModelConfig, Transformer, ar_loss, attention_at, compile_model, diffusion_loss
from sample import STRATEGIES, Decoding, Sampling, Trained, generate, generate_ar, generate_batch
from support.cli import COUNT, HelpFormatter, UserError, add_device_options, output_file, pick_device, pick_dtype
from support.flex import AnnealFlex
from support.report import flops_per_token, matmul_peak
from tokenizer import load_tokenizer

SHAPES = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=128),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
}
SUITES = {  # training (shape, batch, length) list; decoding (shape, lengths, batch); batched: (shape, length)
    "tiny": {"train": [("tiny", 2, 64)], "decode": ("tiny", [32], 1), "batched": ("tiny", 16), "iters": 2},
    "cpu": {
        "train": [("gpt2-small", 1, 1024)],
        "decode": ("gpt2-small", [128], 1),
        "batched": ("gpt2-small", 128),
        "iters": 3,
    },
    "gpu": {
        "train": [("gpt2-small", 16, 1024), ("gpt2-medium", 8, 1024)],
        "decode": ("gpt2-medium", [256, 1024], 1),
        "batched": ("gpt2-medium", 256),
        "iters": 10,
    },
}
VOCAB, MASK = 50258, 50257  # GPT-2 plus the mask token
PROMPT = "Once upon a time, there was a little girl named Lily. One day,"  # --decode-ckpt's
SAMPLING = {
    "official defaults": Sampling(temperature=0.95, top_p=0.9),  # the official inference scripts'
    "plain": Sampling(),
}


def timed(fn, iters, device, warmup=1):
    """Mean seconds per call after warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def interleaved(fns, rounds, device):
    """Best seconds per call of each function, measured round-robin so that a noisy machine hits all alike."""
    for fn in fns.values():  # warm-up
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, 1, device, warmup=0))
    return best


def official_anneal_mask(L, B, dtype, device, ratio):
    """The official code's mask: causal OR Bernoulli(ratio), expanded to (B, 1, L, L), as an additive float mask."""
    causal = torch.ones(L, L, device=device).tril()
    allowed = torch.logical_or(causal, torch.bernoulli(torch.full((L, L), ratio, device=device)))
    inverted = 1.0 - allowed[None, None].expand(B, 1, L, L).to(dtype)
    return inverted.masked_fill(inverted.bool(), torch.finfo(dtype).min)


def official_step(hf, optimizer, x, maskable, t, noise, ratio, autocast, dtype):
    """One training step the official way: dense float mask, logits at every position, masked-out loss."""
    masked = maskable & (noise < t[:, None])
    xt = x.masked_fill(masked, MASK)
    with autocast:
        mask = official_anneal_mask(x.shape[1], x.shape[0], dtype, x.device, ratio)
        logits = hf(input_ids=xt, attention_mask=mask).logits[:, :-1]
        ce = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
        ).view_as(masked[:, 1:])
        target = masked[:, 1:]
        loss = (ce * target / t[:, None]).sum() / target.sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench_training(shape, B, L, device, dtype, iters, peak, compiled):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="gpt2", vocab_size=VOCAB, block_size=L, **SHAPES[shape])
    model = Transformer(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB - 1, (B, L), generator=g).to(device)
    maskable = torch.ones(B, L, dtype=torch.bool, device=device)
    maskable[:, 0] = False
    t = torch.full((B,), 0.5, device=device)
    noise = torch.rand(B, L, generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    fused = device.type == "cuda"
    runners = {"ours": model} | ({"ours, compiled": compile_model(model)} if compiled else {})  # side by side
    flex = AnnealFlex(L, device) if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)

    def ours(runner, mode):
        attn = attention_at(49, 100, L, 0, device, flex) if mode == "anneal" else "full"  # ratio 0.5

        def step():
            with autocast:
                if mode == "ar":
                    loss = ar_loss(runner, x).mean()
                else:
                    s, _, n = diffusion_loss(runner, x, maskable, t, noise, MASK, attn)
                    loss = s / n
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    steps = {
        (engine, mode): ours(runner, mode) for engine, runner in runners.items() for mode in ("anneal", "full", "ar")
    }
    try:
        hf = hf_twin(model)
        hf_optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-5, fused=fused)
        for mode, ratio in (("anneal", 0.5), ("full", 1.0)):
            steps[("official-style", mode)] = partial(
                official_step, hf, hf_optimizer, x, maskable, t, noise, ratio, autocast, dtype
            )
    except ImportError:
        print("(transformers not installed: no official-style comparison)", file=sys.stderr)
    rows = []
    for (engine, mode), sec in interleaved(steps, iters, device).items():
        # MFU counts the useful work: logits at the masked half of the positions (diffusion), all (AR)
        flops = flops_per_token(model, L, logit_fraction=1.0 if mode == "ar" else 0.5) * B * L
        rows.append(
            {
                "bench": "train",
                "shape": shape,
                "mode": mode,
                "batch": B,
                "length": L,
                "engine": engine,
                "tokens_per_s": B * L / sec,
                "mfu": flops / sec / peak,
            }
        )
    return rows


@torch.no_grad()
def official_decode(hf, prefix, length, steps, generator, temperature=0.95, top_p=0.9, mask_id=MASK):
    """The official sampler's loop: all positions' logits every step, nucleus filtering over the full
    vocabulary at every position, a draw for every position, shift, reveal with probability 1/(t+1)."""
    device = hf.device
    x = torch.tensor([prefix + [mask_id] * length], device=device)
    maskable = torch.zeros_like(x, dtype=torch.bool)
    maskable[:, len(prefix) :] = True
    mask = torch.zeros(1, 1, x.shape[1], x.shape[1], device=device)  # full attention, as a dense float mask
    xt = x.clone()

    def predict():
        logits = hf(input_ids=xt, attention_mask=mask).logits[0].float() / temperature
        if top_p < 1:  # nucleus over the full vocabulary
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            drop = sorted_logits.softmax(-1).cumsum(-1) > top_p
            drop[:, 1:] = drop[:, :-1].clone()
            drop[:, 0] = False
            logits = logits.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), torch.finfo(logits.dtype).min)
        tokens = torch.multinomial(logits.log_softmax(-1).exp(), 1, generator=generator).squeeze(-1)
        x0 = torch.cat([x[0, :1], tokens[:-1]])  # shift: the logit at i predicts i+1
        return torch.where(maskable[0], x0, xt[0])

    x0 = predict()
    for t in range(steps - 1, 0, -1):
        reveal = maskable[0] & (torch.rand(x.shape[1], generator=generator, device=device) < 1 / (t + 1))
        xt[0, reveal] = x0[reveal]
        maskable[0] &= ~reveal
        x0 = predict()
    return x0


def bench_decoding(shape, lengths, device, dtype):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="gpt2", vocab_size=VOCAB, block_size=max(lengths) + 8, **SHAPES[shape])
    model = Transformer(cfg).to(device).eval()
    if dtype != torch.float32:
        model = model.to(dtype)
    prefix = [0, 464, 3797]
    rows = []
    try:
        hf = hf_twin(model).eval()
    except ImportError:
        hf = None
    trained = Trained(MASK, vocab=VOCAB - 1)
    for L in lengths:
        for (setting, sampling), steps in [(s, L // 4) for s in SAMPLING.items()] + [(s, L) for s in SAMPLING.items()]:
            ours = partial(generate, model, prefix, L)  # ours(decoding, trained)
            exact = Decoding(steps, sampling=sampling)
            candidates = {f"ours {s} (exact)": partial(ours, replace(exact, strategy=s), trained) for s in STRATEGIES}
            approx = replace(exact, strategy="confidence", cache=True, threshold=0.9)
            candidates["ours confidence + cache + threshold 0.9 (approx.)"] = partial(ours, approx, trained)
            blocks = replace(approx, block_length=min(32, L))
            candidates["ours confidence + cache + threshold 0.9 + blocks of 32 (approx.)"] = partial(
                ours, blocks, trained
            )
            for block in (4, 32) if steps == L else ():  # block diffusion: a block at a time over an exact cache
                in_blocks = replace(trained, block=block)
                candidates[f"ours block diffusion, B = {block}, exact cache"] = partial(ours, exact, in_blocks)
                fast = replace(exact, strategy="confidence", threshold=0.9)
                candidates[f"ours block diffusion, B = {block}, exact cache + threshold 0.9"] = partial(
                    ours, fast, in_blocks
                )
            if hf is not None:
                g = torch.Generator(device=device).manual_seed(0)
                candidates["official-style loop"] = partial(
                    official_decode, hf, prefix, L, steps, g, sampling.temperature, sampling.top_p
                )
            for name, fn in candidates.items():
                sec = timed(fn, 1, device, warmup=0)
                rows.append(
                    {
                        "bench": "decode",
                        "shape": shape,
                        "length": L,
                        "steps": steps,
                        "sampling": setting,
                        "engine": name,
                        "tokens_per_s": L / sec,
                    }
                )
        sec = timed(
            partial(generate_ar, model, [prefix], L, Trained(MASK, vocab=VOCAB - 1), seeds=[0]), 1, device, warmup=0
        )
        rows.append(
            {
                "bench": "decode",
                "shape": shape,
                "length": L,
                "steps": L,
                "sampling": "plain",
                "engine": "ours AR with KV cache",
                "tokens_per_s": L / sec,
            }
        )
    return rows


def bench_checkpoint_decoding(path, length, device, dtype):
    """--decode-ckpt: decoding on a real checkpoint's weights (SmolLM2-135M), greedy, one token per step:
    AR with its KV cache against the whole-sequence and block decoders, each with and without --threshold 0.9.
    Forward passes per generated token say how often the threshold fires: below 1 only where a pass reveals
    several tokens (blocks add one pass per block, to write it into the cache)."""
    model, meta = load_checkpoint(path, device=device, dtype=dtype)
    tok = load_tokenizer(path, meta)
    prefix, trained = tok.encode(PROMPT, bos=True, special=True), Trained.of(meta, vocab=tok.n_vocab)
    ours = partial(generate, model, prefix, length)  # ours(decoding, trained)
    exact = Decoding(length, strategy="confidence", sampling=Sampling(greedy=True))
    engines = {
        "AR with KV cache": partial(generate_ar, model, [prefix], length, trained, seeds=[0], sampling=exact.sampling)
    }
    for block in (0, 32, 4):
        for threshold in (None, 0.9):
            name = f"{'whole sequence' if not block else f'blocks of {block}, exact cache'}"
            name += " + threshold 0.9" if threshold else ""
            engines[name] = partial(ours, replace(exact, threshold=threshold), replace(trained, block=block))
    if trained.block >= 2:  # a block checkpoint drafts for its own AR mode (lossless only with --ar-weight's training)
        engines[f"self-speculative, drafts of {trained.block - 1}"] = partial(
            generate_ar, model, [prefix], length, trained, seeds=[0], sampling=exact.sampling, drafter=(model, trained)
        )
    engines["AR with KV cache"]()  # warm-up
    rows = pass_cost(model, path, device)
    for name, fn in engines.items():
        start = time.perf_counter()
        passes = fn()[1]  # (tokens, forward passes)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - start
        rows.append(
            {
                "bench": "checkpoint decode",
                "ckpt": str(path),
                "length": length,
                "engine": name,
                "tokens_per_s": length / sec,
                "passes_per_token": passes / length,
            }
        )
    return rows


def pass_cost(model, path, device, context=128, sizes=(1, 2, 4, 8, 16, 32), rounds=5):
    """The time of one batch-1 pass of T new tokens over `context` cached ones, against T: what a speculative pass
    (T = 2B: the draft read causally, and the noisy block) costs beside an AR one. Memory-bound passes cost
    little more for more tokens; self-speculation wins where its tokens per pass exceed cost(2B) / cost(1)."""
    cache, x = (
        model.make_cache(1, context + max(sizes)),
        torch.randint(0, 100, (1, context + max(sizes)), device=device),
    )
    with torch.no_grad():
        model(x[:, :context], attn="causal", cache=cache)
        slots = torch.arange(context + max(sizes), device=device)

        def one_pass(T):
            positions = slots[context : context + T]
            model(x[:, context : context + T], attn=slots <= positions[:, None], cache=cache, positions=positions)

        times = interleaved({T: partial(one_pass, T) for T in sizes}, rounds, device)
    return [
        {"bench": "pass cost", "ckpt": str(path), "context": context, "tokens": T, "ms": 1000 * t}
        | {"vs_one": t / times[sizes[0]]}
        for T, t in times.items()
    ]


def bench_batched_decoding(shape, length, batch_sizes, device, dtype):
    """32 prompts of 4 to 64 tokens, exact confidence decoding at T = L/4: batches against a loop, one at a
    time (batch 1: the same generate_batch with one row)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="gpt2", vocab_size=VOCAB, block_size=64 + length + 8, **SHAPES[shape])
    model = Transformer(cfg).to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [
        [0, *torch.randint(1, VOCAB - 1, (int(n) - 1,), generator=g).tolist()]
        for n in torch.randint(4, 65, (32,), generator=g)
    ]
    decoding = Decoding(length // 4, "confidence", SAMPLING["official defaults"])
    trained = Trained(MASK, vocab=VOCAB - 1)
    engines = {
        "batch 1 (a loop)": lambda: [
            generate_batch(model, [(p, [])], length, decoding, trained, seeds=[k]) for k, p in enumerate(prompts)
        ]
    }
    for b in batch_sizes:
        engines[f"batches of {b}"] = lambda b=b: [
            generate_batch(
                model, [(p, []) for p in prompts[i : i + b]], length, decoding, trained, seeds=[*range(i, i + b)]
            )
            for i in range(0, len(prompts), b)
        ]
    seconds = {name: timed(fn, 1, device, warmup=0) for name, fn in engines.items()}
    loop = seconds["batch 1 (a loop)"]
    return [
        {
            "bench": "batched decode",
            "shape": shape,
            "length": length,
            "steps": length // 4,
            "engine": name,
            "tokens_per_s": len(prompts) * length / sec,
            "vs_loop": loop / sec,
        }
        for name, sec in seconds.items()
    ]


QUALITY_VARIANTS = {  # name: (eval.py's decoding options, the exact variant with the same decoding order)
    "exact": ({}, "exact"),
    "threshold 0.9": ({"threshold": 0.9}, "exact"),
    "cache": ({"cache": True}, "exact"),
    "cache + threshold 0.9": ({"cache": True, "threshold": 0.9}, "exact"),
    "blocks of 32 (exact)": ({"block_length": 32}, "blocks of 32 (exact)"),
    "cache + blocks of 32": ({"cache": True, "block_length": 32}, "blocks of 32 (exact)"),
    "cache + threshold 0.9 + blocks of 32": (
        {"cache": True, "threshold": 0.9, "block_length": 32},
        "blocks of 32 (exact)",
    ),
    "blocks of 16 (exact)": ({"block_length": 16}, "blocks of 16 (exact)"),
    "cache + blocks of 16": ({"cache": True, "block_length": 16}, "blocks of 16 (exact)"),
}


def bench_quality(args):
    """What the approximate decoding options cost on a trained checkpoint: Gen PPL, distinct-2 and
    infill ROUGE, against the exact sampler and against the exact sampler with the same block order."""
    rows, batch = [], 16
    for name, (options, reference) in QUALITY_VARIANTS.items():
        genppl = dict(
            task="genppl", judge=args.judge, length=64, steps=64, limit=args.quality_samples, batch_size=batch
        )
        gen = run_script("lab/eval.py", ckpt=args.quality_ckpt, **genppl, strategy="confidence", **options)
        row = {
            "bench": "quality",
            "variant": name,
            "reference": reference,
            "gen_ppl": gen["gen_ppl"],
            "distinct2": gen["distinct2"],
            "passes_per_batch": gen["forwards"] / -(-gen["n"] // batch),
        }
        if args.quality_data:
            infill = run_script(
                "lab/eval.py",
                ckpt=args.quality_ckpt,
                task="infill",
                data=args.quality_data,
                limit=40,
                greedy=True,
                **options,
            )
            row.update({k: v for k, v in infill.items() if k.startswith("rouge")})
        rows.append(row)
    return rows


def report(rows):
    """The rows as tables, each speed beside the official-style engine's on the same work."""
    of_kind = lambda kind: [r for r in rows if r["bench"] == kind]
    lines = []
    if train := of_kind("train"):
        official = {(r["shape"], r["mode"]): r["tokens_per_s"] for r in train if r["engine"] == "official-style"}
        lines += [
            "training step",
            f"{'shape':12} {'mode':7} {'engine':15} {'tokens/s':>10} {'MFU':>7} {'ours/official':>14}",
        ]
        for r in train:
            ref = official.get((r["shape"], r["mode"])) if r["engine"].startswith("ours") else None
            ratio = f"{r['tokens_per_s'] / ref:.2f}x" if ref else ""
            speed = f"{r['tokens_per_s']:10,.0f} {r['mfu']:7.1%} {ratio:>14}"
            lines.append(f"{r['shape']:12} {r['mode']:7} {r['engine']:15} {speed}")
    if decode := of_kind("decode"):
        official = {
            (r["length"], r["steps"], r["sampling"]): r["tokens_per_s"]
            for r in decode
            if r["engine"] == "official-style loop"
        }
        ar = {r["length"]: r["tokens_per_s"] for r in decode if r["engine"].startswith("ours AR")}
        lines += [
            "",
            "decoding (official defaults: temperature 0.95, top-p 0.9; plain: temperature 1, no top-p)",
            f"{'length':>6} {'steps':>5} {'sampling':17} {'engine':64} {'tokens/s':>9} {'/official':>9} {'/AR':>6}",
        ]
        for r in decode:
            ref = official.get((r["length"], r["steps"], r["sampling"]))
            vs_official = f"{r['tokens_per_s'] / ref:.2f}x" if ref else ""
            speed = f"{r['tokens_per_s']:9,.1f} {vs_official:>9} {r['tokens_per_s'] / ar[r['length']]:5.2f}x"
            lines.append(f"{r['length']:6} {r['steps']:5} {r['sampling']:17} {r['engine']:64} {speed}")
    if checkpoint := of_kind("checkpoint decode"):
        ar = checkpoint[0]["tokens_per_s"]
        lines += [
            "",
            f"decoding {checkpoint[0]['length']} tokens greedily on {checkpoint[0]['ckpt']}'s weights, one per step",
            f"{'engine':48} {'tokens/s':>9} {'/AR':>6} {'passes/token':>13}",
            *(
                f"{r['engine']:48} {r['tokens_per_s']:9,.1f} {r['tokens_per_s'] / ar:5.2f}x "
                f"{r['passes_per_token']:13.2f}"
                for r in checkpoint
            ),
        ]
    if cost := of_kind("pass cost"):
        lines += [
            "",
            f"one pass of T new tokens over {cost[0]['context']} cached ones, batch 1, on {cost[0]['ckpt']}'s weights",
            f"{'T':>4} {'ms':>8} {'/ one token':>12}",
            *(f"{r['tokens']:4} {r['ms']:8.1f} {r['vs_one']:11.2f}x" for r in cost),
        ]
    if batched := of_kind("batched decode"):
        r = batched[0]
        lines += [
            "",
            f"batched decoding: 32 prompts of 4-64 tokens, {r['length']} tokens each, confidence order (exact), "
            f"T = {r['steps']}",
            f"{'engine':22} {'tokens/s':>9} {'/loop':>7}",
            *(f"{r['engine']:22} {r['tokens_per_s']:9,.1f} {r['vs_loop']:6.2f}x" for r in batched),
        ]
    if quality := of_kind("quality"):
        gen_ppl = {r["variant"]: r["gen_ppl"] for r in quality}
        lines += [
            "",
            "approximate decoding: quality against the exact sampler, and against the exact one with the same blocks",
            f"{'variant':38} {'Gen PPL':>8} {'vs exact':>9} {'vs blocks':>9} {'distinct-2':>10} {'passes':>7} "
            f"{'ROUGE-L':>8}",
        ]
        for r in quality:
            vs_exact, vs_blocks = r["gen_ppl"] / gen_ppl["exact"] - 1, r["gen_ppl"] / gen_ppl[r["reference"]] - 1
            rouge_l = r.get("rougeL", float("nan"))
            lines.append(
                f"{r['variant']:38} {r['gen_ppl']:8.1f} {vs_exact:+9.1%} {vs_blocks:+9.1%} "
                f"{r['distinct2']:10.3f} {r['passes_per_batch']:7.1f} {rouge_l:8.2f}"
            )
    return "\n".join(lines)


def parts_to_skip(text):
    """--skip: comma-separated names of the parts of the suite (an argparse type)."""
    names = {name for name in text.split(",") if name}
    if names - {"train", "decode", "batched"}:
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(names - {'train', 'decode', 'batched'})}")
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_device_options(p)
    p.add_argument("--suite", choices=sorted(SUITES), default=None, help="default: gpu on CUDA, else cpu")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the compiled training step (default: on GPU)",
    )
    p.add_argument("--skip", type=parts_to_skip, default="", help="comma-separated: train, decode, batched")
    p.add_argument("--quality-ckpt", type=Path, help="a trained diffusion checkpoint for the quality measurement")
    p.add_argument("--judge", type=Path, help="its AR judge")
    p.add_argument("--quality-data", type=Path, help="stories for the infill ROUGE")
    p.add_argument("--quality-samples", type=COUNT, default=512, help="unconditional samples per variant for Gen PPL")
    p.add_argument("--decode-ckpt", type=Path, help="also time decoding on this checkpoint's real weights")
    p.add_argument("--json", type=output_file, help="also write the rows here")
    args = p.parse_args(argv)
    if args.decode_ckpt:
        read_meta(args.decode_ckpt)  # not a checkpoint: said now, not after minutes of measuring
    if args.quality_ckpt and not args.judge:
        raise UserError("--quality-ckpt needs --judge (an AR checkpoint that scores the samples)")
    device = pick_device(args.device)
    suite = SUITES[args.suite or ("gpu" if device.type == "cuda" else "cpu")]
    dtype = pick_dtype(args.dtype, device)
    compiled = device.type == "cuda" if args.compile is None else args.compile
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    warnings.simplefilter("ignore")
    peak = matmul_peak(
        device, dtype, n=4096 if device.type == "cuda" else 2048, repeats=10 if device.type == "cuda" else 3
    )
    print(
        f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {dtype}, "
        f"measured matmul peak {peak / 1e12:.2f} TFLOP/s, torch {torch.__version__}, compile {compiled}",
        file=sys.stderr,
    )
    rows = []
    if "train" not in args.skip:
        for shape, B, L in suite["train"]:
            rows += bench_training(shape, B, L, device, dtype, suite["iters"], peak, compiled)
    if "decode" not in args.skip:
        shape, lengths, _ = suite["decode"]
        rows += bench_decoding(shape, lengths, device, dtype)
    if "batched" not in args.skip:
        rows += bench_batched_decoding(*suite["batched"], [8, 32], device, dtype)
    if args.decode_ckpt:
        rows += bench_checkpoint_decoding(args.decode_ckpt, 64, device, dtype)
    if args.quality_ckpt:
        rows += bench_quality(args)
    text = report(rows)
    print(f"matmul peak {peak / 1e12:.2f} TFLOP/s ({dtype}, {device})\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"peak_flops": peak, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
