"""One command for a lent GPU: every GPU path of the project checked and timed, in one table for the README.

    python lab/gpu_check.py                          # one H100: about 5 minutes (an estimate: never run yet)
    python lab/gpu_check.py --json gpu_check.json    # the same, and its rows as JSON
    python lab/gpu_check.py --device cpu --tiny      # tiny shapes, fp32, DDP on gloo: what the CPU test runs

No GPU has run this project yet: bf16 autocast, torch.compile on CUDA, FlexAttention's masks and their backward,
fused AdamW and NCCL DDP are untested. The rows, in order (--only picks some):
  flex    FlexAttention's BlockMask (support.flex.AnnealFlex) against the boolean mask of the same rule
          (model.attention_at), the loss and every gradient, in fp32: the annealing mask, block diffusion's, and
          block diffusion's that keeps the AR model. A CPU has no FlexAttention backward: forward only there.
  train   train.py's step (its defaults: autocast, diffusion_loss, annealing into full attention, clipping, fused
          AdamW on a GPU), eager and compiled (train.wrap: model.compile_model), on GPT-2-small's and
          LLaMA-3.2-1B's shapes: ms per step, tokens/s, MFU, peak memory, graph breaks (any: FAIL), graphs
          compiled, and how far the compiled first step's loss and gradient norm lie from eager's (same weights,
          same batch).
  decode  tokens/s of AR greedy decoding with its KV cache against diffusion decoding (the whole sequence in L and
          in L/4 steps; blocks over their exact cache), batch 1 and 8, on random GPT-2-small weights: speed only.
  decode-compiled  the same, compiled as sample.py --compile compiles; only when --only names it (minutes of
          compiling on a GPU).
  ddp     train.py's DDP (torchrun; NCCL, gloo on a CPU) over every GPU present: a few compiled steps, every rank's
          parameters equal after them, tokens/s against one GPU's. One GPU: skipped.
Random tokens and random weights throughout: the rows say whether the paths run and agree, and how fast; no row
says anything about what a trained model learns. A row that fails says FAIL (an exception in a row is its FAIL,
its traceback on standard error); the whole table comes out, then the script exits 1. Progress goes to standard
error, the table (markdown) to standard output.
"""

import argparse
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train
from model import EPS, ModelConfig, Transformer, attention_at, compile_model, diffusion_loss, mix
from sample import Decoding, Sampling, Trained, generate_ar, generate_batch
from support import cli
from support.cli import DTYPES, HelpFormatter, output_file
from support.files import atomic_write
from support.flex import AnnealFlex
from support.report import flops_per_token, peak_flops

CHECKS = ("flex", "train", "decode", "decode-compiled", "ddp")  # in the order they run
DEFAULT_CHECKS = "flex,train,decode,ddp"  # decode-compiled: minutes more of compiling on a GPU, when time allows
SHAPES = {  # name: (model, micro-batch, sequence length), then --tiny's
    "GPT-2-small": (dict(arch="gpt2", vocab_size=50258, n_layer=12, n_head=12, n_embd=768), 16, 1024),
    "LLaMA-3.2-1B": (
        dict(
            arch="llama",
            vocab_size=128256,
            n_layer=16,
            n_head=32,
            n_kv_head=8,
            n_embd=2048,
            ffn_dim=8192,
            rope_theta=500000.0,
            rope_scaling=32.0,
            norm_eps=1e-5,
        ),
        4,
        2048,
    ),
}
TINY_SHAPES = {
    "GPT-2-small": (dict(arch="gpt2", vocab_size=128, n_layer=2, n_head=4, n_embd=64), 2, 64),
    "LLaMA-3.2-1B": (dict(arch="llama", vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64), 2, 64),
}
FLEX_CASES = [("annealing mask", 0, False), ("blocks of 16, annealing", 16, False), ("blocks of 16, ar", 16, True)]
FLEX_LOSS_TOL, FLEX_GRAD_ATOL, FLEX_GRAD_RTOL = 1e-4, 2e-4, 2e-3  # tests/test_gpu.py's for the gradients
# compiled against eager, the first step: |Δ loss| and |Δ gradient norm| / norm (bf16 keeps 3 significant digits)
COMPILED_LOSS_TOL, COMPILED_NORM_RTOL = (
    {torch.float32: 1e-5, torch.bfloat16: 2e-2},
    {torch.float32: 1e-4, torch.bfloat16: 2e-2},
)
DDP_SPREAD_TOL = 1e-6  # every rank applies the same all-reduced gradient: equal, bit for bit, is what to expect
START = time.perf_counter()  # progress lines and the table's header say the time since


def row(check, case, figures, result, **numbers):
    return {"check": check, "case": case, "figures": figures, "result": result, **numbers}


def say(text):
    print(f"[gpu_check {time.perf_counter() - START:6.1f} s] {text}", file=sys.stderr, flush=True)


def failed(check, case, e):
    """An exception in a row: its FAIL, with the traceback on standard error, and the memory it held let go."""
    traceback.print_exc()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    first_line = (str(e).strip().splitlines() or [""])[0][:160]
    return row(check, case, "", f"FAIL: {type(e).__name__}: {first_line}")


def compile_counts():
    """What torch.compile did since fresh_compiler(): (graph breaks, frames it gave up on and ran eagerly, such as a
    recompile limit hit, which is no graph break; graphs compiled; the first line of each reason for the two)."""
    counters = torch._dynamo.utils.counters
    breaks, eager_frames = counters["graph_break"], counters["unimplemented"]
    reasons = [reason.splitlines()[0] for reason in [*breaks, *eager_frames]]
    return sum(breaks.values()), sum(eager_frames.values()), counters["stats"]["unique_graphs"], reasons


def fresh_compiler():
    """A new start for torch.compile, as in a new process: no compiled graphs, counters at 0."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def synced(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# flex: the BlockMask computes what the boolean mask computes


def flex_rows(device, tiny):
    """The loss and gradients of one batch under each training mask, from FlexAttention's BlockMask and from the
    boolean mask, at step 30 of 100 of annealing (ratio 0.31), in fp32. The model is small (2 layers, grouped
    heads); the sequence is GPT-2's: the mask is what is checked."""
    L, heads, width, vocab = (64, 4, 64, 128) if tiny else (1024, 8, 512, 1024)
    cfg = ModelConfig("llama", vocab, L, n_layer=2, n_head=heads, n_kv_head=heads // 2, n_embd=width)
    backward = device.type == "cuda"
    if device.type == "cuda":  # fp32 means fp32 here: no TF32 in the matmuls nor in FlexAttention's kernel
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(cfg)
        x = torch.randint(0, cfg.vocab_size - 1, (2, L))
        maskable = torch.ones_like(x, dtype=torch.bool)
        maskable[:, 0] = False
        t, noise = torch.tensor([0.3, 0.7]), torch.rand(2, L)
    rows = []
    for case, block, ar in FLEX_CASES:
        name = f"{case}, L {L}"
        say(f"flex: {name}")
        try:
            losses, grads = [], []
            for flex in (AnnealFlex(L, device, block, ar), None):
                model.zero_grad(set_to_none=True)
                attn = attention_at(30, 100, L, 1, device, flex, block, ar)
                with torch.set_grad_enabled(backward):
                    sums = diffusion_loss(model, x, maskable, t, noise, cfg.vocab_size - 1, attn, block=block, ar=ar)
                    loss = sums[0] / sums[2] + (sums[3] / sums[4] if ar else 0)  # ar: the AR half's loss too
                if backward:
                    loss.backward()
                    grads.append([p.grad for p in model.parameters()])
                losses.append(loss.item())
        except NotImplementedError as e:  # FlexAttention on this device: not there at all
            if device.type == "cuda":
                rows.append(failed("flex", name, e))
            else:
                rows.append(row("flex", name, str(e).splitlines()[0][:120], "skipped: needs CUDA"))
            continue
        except Exception as e:
            rows.append(failed("flex", name, e))
            continue
        loss_diff = abs(losses[0] - losses[1])
        ok = loss_diff <= FLEX_LOSS_TOL
        figures = f"max abs Δ loss {loss_diff:.1e} (≤ {FLEX_LOSS_TOL:.0e})"
        grad_diff = None
        if backward:
            pairs = list(zip(*grads))
            grad_diff = max((a - b).abs().max().item() for a, b in pairs)
            ok &= all(torch.allclose(a, b, rtol=FLEX_GRAD_RTOL, atol=FLEX_GRAD_ATOL) for a, b in pairs)
            figures += f", max abs Δ grad {grad_diff:.1e} (≤ {FLEX_GRAD_ATOL:.0e} + {FLEX_GRAD_RTOL:.0e} × grad)"
        else:
            figures += "; forward only: FlexAttention has no backward on a CPU"
        result = "PASS" if ok else "FAIL: beyond the tolerance"
        rows.append(row("flex", name, figures, result, loss_diff=loss_diff, grad_diff=grad_diff))
    return rows


# ---------------------------------------------------------------------------------------------
# train: train.py's step, eager and compiled


def train_settings(compiled):
    """train.py's options at their defaults (lr, betas, weight decay, clipping), as its own parser gives them."""
    return train.build_parser().parse_args(["--init-from", "-", "--out-dir", "-", *["--compile"] * compiled])


def random_batch(cfg, B, L, device, seed):
    """What Data.train_batch gives train.py, from random tokens: x, maskable (all but position 0), t, noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size - 1, (B, L), generator=g, device=device)  # any token but the mask
    maskable = torch.ones_like(x, dtype=torch.bool)
    maskable[:, 0] = False  # BOS's position, never noised
    t = EPS + (1 - EPS) * torch.rand(B, generator=g, device=device)
    return x, maskable, t, torch.rand(B, L, generator=g, device=device)


def train_steps(runner, settings, optimizer, cfg, B, L, device, autocast, per_phase, rank=0):
    """train.py's step, per_phase times during annealing, then per_phase times at full attention (both compile)
    -> (losses, gradient norms, {phase: seconds of each step}). Each process (rank) draws its own batches, as
    under torchrun."""
    flex = AnnealFlex(L, device) if device.type == "cuda" else None  # train.py's choice: a BlockMask on a GPU
    objective = train.Objective("diffusion", cfg.vocab_size - 1, shift=True)
    losses, norms, seconds = [], [], {"annealing": [], "full": []}
    for step in range(2 * per_phase):
        batch = random_batch(cfg, B, L, device, mix(step, rank))
        start = synced(device)
        attn = attention_at(step, per_phase + 1, L, 0, device, flex)  # ratio < 1 for the first per_phase steps
        with autocast:
            weighted, _, n = objective.loss_sums(runner, *batch, attn)
        loss = weighted / n.clamp(min=1)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(runner.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss, norm = torch.stack([loss.detach(), norm]).tolist()  # one sync each step, as train.py's logging
        losses.append(loss)
        norms.append(norm)
        seconds["annealing" if step < per_phase else "full"].append(synced(device) - start)
    return losses, norms, seconds


def train_row(name, compiled, device, args, eager):
    """One shape, eager or compiled -> its row. eager: the eager row, whose first step the compiled one's must match
    (the same weights and batch): its loss, a coarse check (random weights predict near-uniformly whatever they
    attend to), and its gradient norm, which the masks and the backward pass move."""
    cfg_options, B, L = (TINY_SHAPES if args.tiny else SHAPES)[name]
    cfg = ModelConfig(block_size=L, **cfg_options)
    dtype, autocast = cli.precision(args.dtype, device)
    settings = train_settings(compiled)
    warm, timed = (1, 2) if args.tiny else (2, 5)  # steps per phase: compiling and warming up, then measured
    torch.manual_seed(0)  # the same weights for eager and compiled
    with torch.device(device):
        model = Transformer(cfg).train()
    params = sum(p.numel() for p in model.parameters())
    if compiled:  # the counters below are this model's
        fresh_compiler()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runner = train.wrap(model, settings, device, world=1)
    optimizer = train.make_optimizer(runner, settings, device)
    t0 = time.perf_counter()
    losses, norms, seconds = train_steps(runner, settings, optimizer, cfg, B, L, device, autocast, warm + timed)
    spent = time.perf_counter() - t0
    ms = {phase: 1000 * statistics.median(s[warm:]) for phase, s in seconds.items()}
    tokens_per_s = B * L / ms["full"] * 1000
    numbers = dict(
        shape=name, engine="compiled" if compiled else "eager", params=params, batch=B, length=L,
        dtype=str(dtype).removeprefix("torch."), ms_annealing=ms["annealing"], ms_full=ms["full"],
        tokens_per_s=tokens_per_s, first_loss=losses[0], first_norm=norms[0], seconds=spent,
    )  # fmt: skip
    masks = "FlexAttention" if device.type == "cuda" else "boolean mask"
    figures = f"{ms['full']:.1f} ms/step ({tokens_per_s:,.0f} tokens/s"
    problems = [] if all(map(math.isfinite, losses + norms)) else ["a loss or a gradient norm is not finite"]
    if device.type == "cuda":  # the MFU of the full-attention steps, against the datasheet's peak
        numbers["mfu"] = flops_per_token(model, L, 0.5) * tokens_per_s / peak_flops(device, dtype)
        numbers["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        figures += f", MFU {numbers['mfu']:.1%}, peak {numbers['peak_gib']:.1f} GiB"
    figures += f"); annealing ({masks}) {ms['annealing']:.1f} ms/step; all {len(losses)} steps {spent:.1f} s"
    if compiled:
        breaks, eager_frames, graphs, reasons = compile_counts()
        numbers |= dict(graph_breaks=breaks, eager_frames=eager_frames, graphs=graphs, reasons=reasons)
        figures += f" (compiling included); {breaks} graph breaks, {eager_frames} frames run eagerly, {graphs} graphs"
        figures += f" ({'; '.join(reasons)})" if reasons else ""
        problems += [f"{breaks} graph breaks"] * (breaks > 0)
        problems += [f"{eager_frames} frames run eagerly"] * (eager_frames > 0)
        if eager is not None:
            numbers["loss_vs_eager"] = abs(losses[0] - eager["first_loss"])
            numbers["norm_vs_eager"] = abs(norms[0] - eager["first_norm"]) / eager["first_norm"]
            tolerances = COMPILED_LOSS_TOL[dtype], COMPILED_NORM_RTOL[dtype]
            figures += f"; first step against eager: loss {losses[0]:.4f}, abs Δ {numbers['loss_vs_eager']:.1e} "
            figures += (
                f"(≤ {tolerances[0]:.0e}), gradient norm {norms[0]:.4f}, relative Δ {numbers['norm_vs_eager']:.1e}"
            )
            figures += f" (≤ {tolerances[1]:.0e})"
            if not numbers["loss_vs_eager"] <= tolerances[0]:
                problems.append("the compiled loss differs from eager's")
            if not numbers["norm_vs_eager"] <= tolerances[1]:
                problems.append("the compiled gradient norm differs from eager's")
    case = f"{name} ({params / 1e6:,.1f}M, B {B} × L {L}, {numbers['dtype']}), {numbers['engine']}"
    return row("train", case, figures, "FAIL: " + "; ".join(problems) if problems else "PASS", **numbers)


def train_rows(device, args):
    rows = []
    for name in SHAPES:
        eager = None
        for compiled in (False, True):
            say(f"train: {name}, {'compiled' if compiled else 'eager'}")
            try:
                rows.append(train_row(name, compiled, device, args, eager))
                eager = rows[-1] if not compiled else eager
            except Exception as e:
                rows.append(failed("train", f"{name}, {'compiled' if compiled else 'eager'}", e))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# decode: diffusion decoding's tokens/s against AR's


def decode_rows(device, args, compiled, eager_rows=()):
    """Greedy decoding of `length` tokens after a prompt by each engine, on random GPT-2-small weights in the
    model's dtype (sample.py's): the speeds of the code paths, not of a trained model (whose confident tokens a
    threshold would reveal early; none is used here). Eager: timed once after a short warm-up.
    Compiled: each engine and batch from a fresh start, as a run of sample.py --compile (dynamic shapes), whose
    first run at the full length compiles (inductor's disk cache may hold its kernels), the second is timed."""
    cfg_options, _, _ = (TINY_SHAPES if args.tiny else SHAPES)["GPT-2-small"]
    prompt, length = (4, 32) if args.tiny else (16, 256)
    dtype = cli.pick_dtype(args.dtype, device)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(ModelConfig(block_size=prompt + length, **cfg_options)).to(dtype).eval()
    vocab = model.cfg.vocab_size - 1
    trained, greedy = Trained(vocab, vocab=vocab), Sampling(greedy=True)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (prompt,), generator=g).tolist() for _ in range(8)]
    runner = compile_model(model, dynamic=True) if compiled else model

    def diffusion(divisor, block=0):  # n tokens in n // divisor steps; blocks of `block` over the exact cache
        blocks = replace(trained, block=block)
        return lambda rows, n: generate_batch(
            runner, rows, n, Decoding(n // divisor, "confidence", greedy), blocks, seeds=list(range(len(rows)))
        )[0][:, prompt : prompt + n]

    engines = {
        "AR greedy, KV cache": lambda rows, n: torch.tensor(
            generate_ar(runner, [p for p, _ in rows], n, trained, seeds=list(range(len(rows))), sampling=greedy)[0]
        )[:, prompt:],
        f"whole sequence, {length} steps": diffusion(1),
        f"whole sequence, {length // 4} steps": diffusion(4),
        f"blocks of 32, exact cache, {length} steps": diffusion(1, block=32),
        f"blocks of 4, exact cache, {length} steps": diffusion(1, block=4),
    }
    mode = "compiled" if compiled else "eager"
    eager = {(r["engine"], r["batch"]): r["tokens_per_s"] for r in eager_rows if r.get("mode") == "eager"}
    rows, ar_speed = [], {}
    for batch in (1, 8):
        rows_in = [(p, []) for p in prompts[:batch]]
        for engine, decode in engines.items():
            case = f"{engine}, batch {batch}, {length} tokens, {mode}"
            say(f"decode: {case}")
            if compiled:
                fresh_compiler()
            try:
                start = synced(device)
                decode(rows_in, length if compiled else 8)  # compiling, or loading kernels and allocating
                first = synced(device) - start
                out = decode(rows_in, length)
                seconds = synced(device) - start - first
            except Exception as e:
                rows.append(failed("decode", case, e))
                continue
            tokens_per_s = batch * length / seconds
            if engine.startswith("AR"):
                ar_speed[batch] = tokens_per_s
            numbers = dict(engine=engine, batch=batch, length=length, mode=mode, tokens_per_s=tokens_per_s)
            figures = f"{tokens_per_s:,.0f} tokens/s"
            if batch in ar_speed:
                numbers["vs_ar"] = tokens_per_s / ar_speed[batch]
                figures += f", {numbers['vs_ar']:.2f}× AR{' compiled' * compiled}"
            problems = (
                [] if out.shape == (batch, length) and bool(((out >= 0) & (out < vocab)).all()) else ["masks left"]
            )
            if compiled:
                breaks, eager_frames, graphs, reasons = compile_counts()
                numbers |= dict(graph_breaks=breaks, eager_frames=eager_frames, graphs=graphs, reasons=reasons)
                figures += f", first run (compiling) {first:.1f} s; {graphs} graphs, {breaks} graph breaks"
                figures += f", {eager_frames} frames run eagerly" + (f" ({'; '.join(reasons)})" if reasons else "")
                numbers["first_run_s"] = first
                problems += [f"{breaks} graph breaks"] * (breaks > 0)
                problems += [f"{eager_frames} frames run eagerly"] * (eager_frames > 0)
                if (engine, batch) in eager:
                    numbers["vs_eager"] = tokens_per_s / eager[engine, batch]
                    figures += f", {numbers['vs_eager']:.2f}× eager"
            rows.append(row("decode", case, figures, "FAIL: " + "; ".join(problems) if problems else "PASS", **numbers))
    return rows


# ---------------------------------------------------------------------------------------------
# ddp: train.py's DDP over the GPUs present, as torchrun runs it


def ddp_row(device, args, rows):
    """Runs this script's worker (ddp_worker) under torchrun, one process per GPU (two gloo processes on a CPU)."""
    world = torch.cuda.device_count() if device.type == "cuda" else 2
    case = f"GPT-2-small{' (tiny)' * args.tiny}, compiled, {world} processes"
    if world < 2:
        return row("ddp", "GPT-2-small, compiled", "", f"skipped: {world} GPU")
    say(f"ddp: {case}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    command += [__file__, "--ddp-worker", "--device", device.type, "--dtype", args.dtype] + ["--tiny"] * args.tiny
    # its own session, so that a timeout stops torchrun's workers too
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as p:
        try:
            out, err = p.communicate(timeout=300 if args.tiny else 600)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            print(err[-4000:], file=sys.stderr)
            return row("ddp", case, "", "FAIL: torchrun timed out")
    if p.returncode:
        print(err[-4000:], file=sys.stderr)
        last = (err.strip().splitlines() or [""])[-1][:160]
        return row("ddp", case, "", f"FAIL: torchrun exit {p.returncode}: {last}")
    numbers = json.loads(out.strip().splitlines()[-1])
    figures = f"{numbers['tokens_per_s']:,.0f} tokens/s over {world} ({numbers['backend']})"
    one = [r for r in rows if r.get("shape") == "GPT-2-small" and r.get("engine") == "compiled"]
    if one:  # the same step on one process: the train row's
        numbers["vs_one"] = numbers["tokens_per_s"] / one[0]["tokens_per_s"]
        figures += f", {numbers['vs_one']:.2f}× one process's ({numbers['vs_one'] / world:.0%} of linear)"
    figures += f"; rank 0: {numbers['graphs']} graphs (one process: {one[0]['graphs'] if one else '?'})"
    figures += f", {numbers['graph_breaks']} graph breaks, {numbers['eager_frames']} frames run eagerly"
    figures += f" ({'; '.join(numbers['reasons'])})" if numbers["reasons"] else ""
    figures += f"; parameters' spread across ranks {numbers['spread']:.1e} (≤ {DDP_SPREAD_TOL:.0e})"
    # train.wrap compiles the model, then wraps it in DDP: compiling DDP itself broke the graph in DDP's own forward
    result = "PASS" if numbers["spread"] <= DDP_SPREAD_TOL else "FAIL: the ranks' parameters differ"
    if numbers["graph_breaks"] or numbers["eager_frames"]:
        result = f"FAIL: {numbers['graph_breaks']} graph breaks, {numbers['eager_frames']} frames run eagerly"
    return row("ddp", case, figures, result, world=world, **numbers)


def ddp_worker(args):
    """One torchrun process: train.py's setup, wrap (compile, then DDP) and step; rank 0 prints one JSON line."""
    import torch.distributed as dist

    rank, world, device = train.setup_distributed(args.device)
    dtype, autocast = cli.precision(args.dtype, device)
    cfg_options, B, L = (TINY_SHAPES if args.tiny else SHAPES)["GPT-2-small"]
    cfg = ModelConfig(block_size=L, **cfg_options)
    settings = train_settings(compiled=True)
    torch.manual_seed(rank)  # different weights on each rank: DDP must broadcast rank 0's
    with torch.device(device):
        model = Transformer(cfg).train()
    runner = train.wrap(model, settings, device, world)
    optimizer = train.make_optimizer(runner, settings, device)
    warm, timed = (1, 2) if args.tiny else (2, 5)
    _, _, seconds = train_steps(runner, settings, optimizer, cfg, B, L, device, autocast, warm + timed, rank)
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    breaks, eager_frames, graphs, reasons = compile_counts()
    if rank == 0:
        numbers = dict(
            backend=dist.get_backend(), spread=(high - low).max().item(),
            tokens_per_s=world * B * L / statistics.median(seconds["full"][warm:]),
            graph_breaks=breaks, eager_frames=eager_frames, graphs=graphs, reasons=reasons,
        )  # fmt: skip
        print(json.dumps(numbers))
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The command line and the table


def checks(text):
    """--only: comma-separated names of CHECKS (an argparse type)."""
    names = {name for name in text.split(",") if name}
    if not names or names - set(CHECKS):
        raise argparse.ArgumentTypeError(
            f"unknown checks {sorted(names - set(CHECKS))}: choose from {', '.join(CHECKS)}"
        )
    return names


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    a("--device", default="cuda", help="cuda, cuda:N, or cpu (the CPU test)")
    a("--dtype", choices=["auto", *DTYPES], default="auto", help="training's: auto is bf16 on a GPU, fp32 on a CPU")
    a("--tiny", action="store_true", help="tiny shapes and few steps (2 layers, n_embd 64, L 64): the CPU test")
    a("--only", type=checks, default=DEFAULT_CHECKS, help=f"comma-separated checks to run, of {', '.join(CHECKS)}")
    a("--json", type=output_file, help="also write the rows here")
    a("--ddp-worker", action="store_true", help=argparse.SUPPRESS)  # ddp_row's torchrun processes
    return p.parse_args(argv)


def markdown(rows):
    cell = lambda text: str(text).replace("|", "\\|")  # an error message's | would end its cell
    lines = ["| check | case | figures | result |", "|---|---|---|---|"]
    return "\n".join(
        lines + ["| " + " | ".join(cell(r[k]) for k in ("check", "case", "figures", "result")) + " |" for r in rows]
    )


def main(argv=None):
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    device = cli.pick_device(args.device)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")  # the CPU's forward
    say(f"{device}, torch {torch.__version__}, checks {', '.join(c for c in CHECKS if c in args.only)}")
    rows = []
    if "flex" in args.only:
        rows += flex_rows(device, args.tiny)
    if "train" in args.only:
        rows += train_rows(device, args)
    if "decode" in args.only:
        rows += decode_rows(device, args, compiled=False)
    if "decode-compiled" in args.only:
        rows += decode_rows(device, args, compiled=True, eager_rows=rows)
    if "ddp" in args.only:
        try:
            rows.append(ddp_row(device, args, rows))
        except Exception as e:
            rows.append(failed("ddp", "GPT-2-small, compiled", e))
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} ×{torch.cuda.device_count()}, CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({os.cpu_count()} cores)"
    dtype = str(cli.pick_dtype(args.dtype, device)).removeprefix("torch.")
    minutes = (time.perf_counter() - START) / 60
    header = (
        f"lab/gpu_check.py{' --tiny' * args.tiny} on {where}, torch {torch.__version__}, {dtype}: {minutes:.1f} min"
    )
    print(f"{header}\n\n{markdown(rows)}")
    if args.json:
        atomic_write(args.json, json.dumps({"header": header, "rows": rows}, indent=2))
    failures = [r for r in rows if r["result"].startswith("FAIL")]
    if failures:
        print(f"{len(failures)} of {len(rows)} rows FAIL", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run_main(main)
