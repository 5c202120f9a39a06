"""Continual pre-training: turn an AR checkpoint into a diffusion LM (or train either from scratch).

    python train.py --init-from CKPT --data-dir DATA --out-dir OUT [--config config/X.json] [options]
    torchrun --nproc_per_node=8 train.py ... [--fsdp]          # same command, many GPUs / nodes

The objective and the annealing mask are model.py's (diffusion_loss, attention_at); this file is
the loop around them: options, setup, then one loop. Position 0 of every window is never noised:
it plays the role of BOS at decoding time (no logit predicts it).

Everything random is a function of (seed, step, example index): a run is reproducible, resumes
exactly, and gives the same result on one process or many with the same global batch.
"""

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import (
    NOT_READ_BACK,
    check_resume,
    load_checkpoint,
    read_meta,
    read_run,
    read_train_state,
    save_checkpoint,
)
from data.shards import Data, check_data
from model import ar_loss, attention_at, compile_model, diffusion_loss
from support import cli
from support.cli import COUNT, NON_NEGATIVE, POSITIVE, HelpFormatter, UserError, checked
from support.files import nested, sole_writer
from support.flex import AnnealFlex
from support.report import HAVE_MATPLOTLIB, flops_per_token, peak_flops, plot_curves

# ---------------------------------------------------------------------------------------------
# Options


AT_LEAST_0 = checked(float, lambda v: v >= 0, "at least 0")
FRACTION = checked(float, lambda v: 0 <= v <= 1, "in [0, 1]")
DECAY = checked(float, lambda v: 0 <= v < 1, "in [0, 1)")
# the anchor, and at least two maskable tokens: with one, a masked window is all mask and teaches nothing
CONTEXT = checked(int, lambda v: v == 0 or v >= 3, "0 (the model's) or at least 3")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    # what to train, on what
    a("--config", type=Path, help="JSON preset (config/*.json); command-line options override it")
    a("--init-from", required=True, help="checkpoint directory, or 'resume' to continue the run in --out-dir")
    a("--reinit", action="store_true", help="random weights with the checkpoint's config and tokenizer (from scratch)")
    a("--data-dir", type=Path, help="data/prepare.py's output (on resume: the run's, unless given)")
    a("--out-dir", required=True, type=Path, help="the run's checkpoint directory, written at each evaluation")
    # the method
    a("--objective", choices=["diffusion", "ar"], default="diffusion", help="what to train for (ar: the baseline)")
    a("--anneal-steps", type=NON_NEGATIVE, default=0, help="steps to open the causal mask to full attention")
    a("--no-shift", action="store_true", help="ablation: the logit at i predicts token i instead of i+1")
    a("--t-sampling", choices=["uniform", "stratified"], default="uniform", help="t per example, or MDLM's strata")
    a("--complementary-masks", action="store_true", help="each row again, masked where it was not (Fast-dLLM v2)")
    a(
        "--diffusion-block",
        type=NON_NEGATIVE,
        help="block diffusion: denoise blocks of this many tokens, each after the clean ones before it (1: AR); "
        "0: the whole sequence, the paper (default: the checkpoint's, else 0)",
    )
    a("--ar-weight", type=AT_LEAST_0, help="keep the AR model at this loss weight (sample.py --speculative)")
    a("--masked-blocks", type=FRACTION, default=0.0, help="this fraction of blocks wholly masked (TiDAR's drafts)")
    # optimisation
    a("--max-iters", type=COUNT, default=1000, help="optimizer steps (on resume: may be raised)")
    a("--extend-schedule", action="store_true", help="on resume: accept the cosine schedule of a new --max-iters")
    a("--batch-size", type=COUNT, default=8, help="sequences per micro-batch per process")
    a("--grad-accum", type=COUNT, help="micro-batches per step over all processes (default: the number of processes)")
    a("--block-size", type=CONTEXT, default=0, help="sequence length (0: the model's maximum, at most 1024)")
    a("--lr", type=POSITIVE, default=3e-4, help="peak learning rate")
    a("--lr-schedule", choices=["cosine", "constant"], default="cosine", help="after warm-up")
    a("--min-lr-ratio", type=FRACTION, default=0.1, help="cosine decays to lr × this")
    a("--warmup-iters", type=NON_NEGATIVE, default=0, help="steps of linear warm-up")
    a("--weight-decay", type=AT_LEAST_0, default=0.1, help="AdamW weight decay, on matrices only")
    a("--beta2", type=DECAY, default=0.95, help="AdamW's second-moment decay (the HF Trainer's: 0.999)")
    a("--grad-clip", type=AT_LEAST_0, default=1.0, help="0 disables")
    # evaluation
    a("--eval-interval", type=COUNT, default=100, help="steps between evaluations (and saves)")
    a("--eval-iters", type=COUNT, default=10, help="evaluation batches")
    # system
    cli.add_device_options(p)  # under torchrun: one GPU per process
    on_off = argparse.BooleanOptionalAction
    a("--compile", action=on_off, default=False, help="torch.compile the model")
    a("--fsdp", action=on_off, default=False, help="shard parameters, gradients and optimizer state (FSDP2)")
    a("--activation-checkpointing", action=on_off, default=False, help="recompute each block in backward")
    a("--seed", type=int, default=0, help="every random draw is a function of (seed, step, example)")
    return p


def lr_at(step, args):
    """Linear warm-up, then cosine decay to lr × min_lr_ratio at max_iters (or constant)."""
    if step < args.warmup_iters:
        return args.lr * (step + 1) / (args.warmup_iters + 1)
    if args.lr_schedule == "constant":
        return args.lr
    progress = (step - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------------------------------------
# The run: every check first, then the loop


def main(argv=None):
    """Options and every check that needs no model; then the run, as --out-dir's one writer (torchrun: rank 0)."""
    args = parse_args(argv)
    init_dir, resumed = check_run(args)
    with sole_writer(args.out_dir, holder=os.environ.get("RANK", "0") == "0"):
        return train(args, init_dir, resumed)


def train(args, init_dir, resumed):
    # setup: processes, precision, model, optimizer, data
    rank, world, device = setup_distributed(args.device)
    master = rank == 0
    dtype, autocast = cli.precision(args.dtype, device)
    args.dtype = str(dtype).removeprefix("torch.")
    raw_model, meta = load_model(init_dir, args, resumed, device)
    model = wrap(raw_model, args, device, world)
    optimizer = make_optimizer(model, args, device)
    step, tokens, metrics = restore(resumed, model, optimizer, meta, args, master) if resumed else (0, 0, [])
    B, L = args.batch_size, args.block_size  # sequences per micro-batch, and their length
    train_data, val_data = Data(args.data_dir, "train", L), Data(args.data_dir, "val", L)
    diffusion = args.objective == "diffusion"
    block = args.diffusion_block if diffusion else 0  # 0: the whole sequence is one block (check_run)
    blocks = -(-L // block) if block else 1
    strata = args.grad_accum * B if args.t_sampling == "stratified" else 0  # MDLM's t: one per stratum
    objective = Objective(
        args.objective, meta["mask_token_id"], not args.no_shift, block, args.complementary_masks, args.ar_weight
    )
    ar = args.ar_weight > 0  # the clean half is the AR model too (--ar-weight)
    accum = args.grad_accum // world  # micro-batches per process
    tokens_per_step = B * L * args.grad_accum
    flops_per_step = flops_per_token(raw_model, L, 0.5 if diffusion else 1.0) * tokens_per_step
    peak = peak_flops(device, dtype) * world
    masked_on_gpu = device.type == "cuda" and diffusion and (step < args.anneal_steps or block)
    flex = AnnealFlex(L, device, block, ar) if masked_on_gpu else None  # a FlexAttention BlockMask, not L×L
    stop = cli.StopRequest()
    if master:
        describe(raw_model, args, world, device, tokens_per_step, train_data)
    measure = functools.partial(evaluate, model, objective, val_data, args, autocast, rank, world, device)
    metrics += measure(0, 0) if step == 0 else []

    bar = cli.progress_bar(total=args.max_iters, initial=step, disable=not master)
    t_last, steps_timed = time.perf_counter(), 0
    while step < args.max_iters:
        # determine the learning rate of this step
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # this step's attention: causal OR Bernoulli(min(1, (step+1)/A)), then full (model.attention_at)
        attn = attention_at(step, args.anneal_steps, L, args.seed, device, flex, block, ar) if diffusion else None

        # forward and backward, accumulating gradients over micro-batches (synchronised on the last one)
        running = torch.zeros(4, dtype=torch.float64, device=device)  # loss, unweighted CE, gradient norm, stop
        for micro in range(accum):
            last = micro == accum - 1
            if args.fsdp:
                model.set_requires_gradient_sync(last)
            with contextlib.nullcontext() if last or world == 1 or args.fsdp else model.no_sync():
                k = micro * world + rank
                batch = train_data.train_batch(args.seed, step, k, B, device, strata, blocks, args.masked_blocks)
                with autocast:
                    weighted, ce, n, *next_token = objective.loss_sums(model, *batch, attn)
                loss = weighted / n.clamp(min=1)
                if ar:  # (diffusion loss + W × the AR model's next-token loss) / (1 + W): TiDAR's
                    loss = (loss + args.ar_weight * next_token[0] / next_token[1]) / (1 + args.ar_weight)
                (loss / accum).backward()
            running[0] += loss.detach().double() / accum
            running[1] += (ce / n.clamp(min=1)).detach().double() / accum

        # clip (--grad-clip 0: measure only), then one all-reduce for the logs, the norm and a stop request
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or math.inf)
        running[2] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
        running[3] = float(stop.signal is not None)
        if world > 1:
            dist.all_reduce(running)
            running[:3] /= world
        train_loss, train_ce, grad_norm, interrupted = *running[:3].tolist(), running[3].item() > 0
        if not math.isfinite(train_loss + grad_norm):  # stop before the step: the last checkpoint stays good
            raise Diverged(f"loss {train_loss}, gradient norm {grad_norm} at step {step}", args.out_dir)

        # the optimizer step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += tokens_per_step

        # log: loss, throughput and MFU since the last checkpoint
        steps_timed += 1
        if master:
            rate = steps_timed / (time.perf_counter() - t_last)
            tok_s = f"{tokens_per_step * rate:,.0f}"
            mfu = {"mfu": f"{flops_per_step * rate / peak:.1%}"} if device.type == "cuda" else {}  # a CPU: no datasheet
            bar.set_postfix(loss=f"{train_loss:.3f}", ce=f"{train_ce:.3f}", tok_s=tok_s, **mfu, refresh=False)
            bar.update(1)

        # evaluate and checkpoint (a signal saves without evaluating, then stops)
        if step % args.eval_interval == 0 or step == args.max_iters or interrupted:
            if not interrupted:
                metrics += measure(step, tokens, {"train_loss": train_loss, "lr": lr})
            save(model, optimizer, meta, args, objective, step, tokens, metrics, init_dir, master)
            t_last, steps_timed = time.perf_counter(), 0
        if interrupted:
            if master:
                bar.write(f"stopped by signal at step {step}; saved {args.out_dir} (--init-from resume)", sys.stderr)
            break
    bar.close()
    if world > 1:
        dist.destroy_process_group()
    if step < args.max_iters:  # stopped by a signal (here or on another rank) and saved: the shell's convention
        sys.exit(128 + (stop.signal or signal.SIGTERM))
    return metrics


# ---------------------------------------------------------------------------------------------
# What the loop calls: the objective, evaluation, saving, stopping


@dataclass
class Objective:
    """What a step minimises: model.py's diffusion loss, or the AR loss (the baseline)."""

    name: str  # "diffusion" | "ar"
    mask_id: int
    shift: bool

    block: int = 0  # block diffusion's block size (0: the whole sequence)
    complementary: bool = False  # each row again with the complementary mask
    ar_weight: float = 0.0  # > 0: the clean half is also the AR model, trained at this weight

    def loss_sums(self, model, x, maskable, t, noise, attn, complementary=None):
        """-> (Σ loss, Σ CE, number of targets): the loss is the first over the third; with ar_weight, then
        (Σ next-token CE, number of its targets). attn: diffusion only."""
        if self.name == "diffusion":
            pair, ar = self.complementary if complementary is None else complementary, self.ar_weight > 0
            return diffusion_loss(
                model, x, maskable, t, noise, self.mask_id, attn, self.shift, False, self.block, pair, ar
            )
        ce = ar_loss(model, x)
        return ce.sum(), ce.sum(), torch.tensor(ce.numel(), device=x.device)


@torch.no_grad()
def evaluate(model, objective, val_data, args, autocast, rank, world, device, step, tokens, logged=None):
    """Validation at fixed windows and a fixed grid of t (diffusion: full attention, the final model), said on rank 0
    -> the metrics lines to append (none off rank 0). val_loss is the diffusion loss alone; with --ar-weight,
    val_ar_nll is the AR mode's exact NLL."""
    model.eval()
    count = args.eval_iters * args.batch_size
    indices, ts, seeds = val_data.eval_examples(count)
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # Σ CE/t, Σ CE, n masked, n maskable; AR: Σ CE, n
    n_batches = -(-count // args.batch_size)
    for j in range(rank, -(-n_batches // world) * world, world):  # every rank runs as many forwards (FSDP)
        rows = slice(j * args.batch_size, (j + 1) * args.batch_size) if j < n_batches else slice(0, args.batch_size)
        x, maskable, t, noise = val_data.batch(indices[rows], ts[rows], seeds[rows], device)
        with autocast:
            weighted, ce, n, *next_token = objective.loss_sums(
                model, x, maskable, t, noise, "full", complementary=False
            )
        n_targets = maskable.sum() if objective.name == "diffusion" else n  # every maskable token is some target
        sums += torch.stack([weighted, ce, n, n_targets, *(next_token or [n * 0] * 2)]).double() * (j < n_batches)
    if world > 1:
        dist.all_reduce(sums)
    model.train()
    w, ce, n, n_all, ar_ce, n_ar = sums.tolist()
    # Σ CE/t over all maskable positions estimates the ELBO: an upper bound on NLL in nats/token.
    result, logged = {"val_loss": w / n, "val_loss_unweighted": ce / n, "val_nll_bound": w / n_all}, logged or {}
    result |= {"val_ar_nll": ar_ce / n_ar} if objective.ar_weight else {}
    if not all(math.isfinite(v) for v in result.values()):  # the same numbers on every rank: all stop
        raise Diverged(f"validation loss {result['val_loss']} at step {step}", args.out_dir)
    if rank == 0:
        train = f"train loss {logged['train_loss']:.4f}, " if logged else ""
        val = f"val loss {result['val_loss']:.4f} (unweighted {result['val_loss_unweighted']:.4f}, "
        ar = f", AR nll {result['val_ar_nll']:.4f}" if objective.ar_weight else ""
        tqdm.write(f"step {step}: {train}{val}nll bound {result['val_nll_bound']:.4f}){ar}", file=sys.stderr)
    return [{"iter": step, "tokens": tokens, **logged, **result}] if rank == 0 else []


def save(model, optimizer, meta, args, objective, step, tokens, metrics, init_dir, master):
    """Write --out-dir atomically: the weights, config.json, train_state.pt, metrics.jsonl, loss.png."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # a NaN never replaces a good checkpoint: every rank checks its weights (FSDP: its shards), all agree
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    ok = torch.stack([p.isfinite().all() for p in local]).all().float()  # one sync, not one per tensor
    if dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if not ok.item():
        raise Diverged(f"non-finite weights at step {step}", args.out_dir)
    # full (unsharded) state on the CPU, keyed by parameter name: a collective under DDP / FSDP
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if not master:
        return
    run_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    shift, training = objective.shift or objective.name == "ar", {"step": step, "tokens": tokens, "args": run_args}
    out_meta = {k: v for k, v in meta.items() if k not in ("model", "training")}
    out_meta |= {"objective": objective.name, "shift": shift, "training": training, "model": meta["model"]}
    out_meta.pop("ar_weight", None)
    if objective.name == "diffusion":
        out_meta["diffusion_block"] = objective.block or None  # None: the whole sequence is one block
        out_meta |= {"ar_weight": objective.ar_weight} if objective.ar_weight else {}
    writers = {
        "train_state.pt": lambda f: torch.save({"step": step, "tokens": tokens, "optimizer": optim_state}, f),
        "metrics.jsonl": lambda f: f.write_text("".join(json.dumps(m) + "\n" for m in metrics)),
    }
    if HAVE_MATPLOTLIB:
        evals = [m for m in metrics if "val_loss" in m]  # not the notes
        curves = {label: ([m["tokens"] for m in evals], [m[key] for m in evals]) for key, label in CURVES.items()}
        writers["loss.png"] = lambda f: plot_curves(curves, f, "nats")
    save_checkpoint(args.out_dir, model_state, out_meta, tokenizer_from=init_dir, overwrite=True, extra=writers)


CURVES = {  # loss.png: metric -> label
    "val_loss": "val loss (CE/t, the paper's)",
    "val_loss_unweighted": "val masked CE",
    "val_nll_bound": "val NLL bound (nats/token)",
}


class Diverged(UserError):
    def __init__(self, what, out_dir):
        kept = (out_dir / "train_state.pt").is_file() and f"the last checkpoint in {out_dir} is kept"  # if there is one
        super().__init__(f"{what}: the run diverged and stopped; {kept or f'no checkpoint was written to {out_dir}'}")


# ---------------------------------------------------------------------------------------------
# Setup: processes, precision, model, optimizer


def setup_distributed(device_arg):
    """-> (rank, world, device). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK."""
    if "RANK" not in os.environ:
        return 0, 1, cli.pick_device(device_arg)
    backend = "nccl" if torch.cuda.is_available() and device_arg in ("auto", "cuda") else "gloo"
    dist.init_process_group(backend)
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def load_model(init_dir, args, resumed, device):
    """The checkpoint's weights (on resume: those of the last save), or fresh ones with --reinit."""
    model, meta = load_checkpoint(init_dir, device="cpu")
    if args.reinit and not resumed:
        torch.manual_seed(args.seed)
        model = type(model)(model.cfg)
    return model.to(device).train(), meta


def wrap(model, args, device, world):
    """FSDP2 (each block, then the root) or DDP when there are several processes; compiled inside DDP (nanoGPT)."""
    model.checkpointing = args.activation_checkpointing
    if args.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        policy = bf16 if args.dtype == "bfloat16" else MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mp_policy=policy)
        model = fully_shard(model, mp_policy=policy)
    model = compile_model(model) if args.compile else model  # DDP's own forward would break the graph; FSDP2's not
    if world == 1 or args.fsdp:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device.index])


def make_optimizer(model, args, device):
    """AdamW, weight decay on matrices only; fused on a GPU (FSDP's DTensors take the default kernel)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda" and not args.fsdp
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2), eps=1e-8, fused=fused)


def restore(state, model, optimizer, meta, args, master):
    """A resumed run: the optimizer state, and where the run stands -> (step, tokens, metrics)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    step, tokens, metrics = state["step"], state["tokens"], state["metrics"]
    run = meta["training"]["args"]
    args.init_from = run["init_from"]  # the run's origin, not "resume"
    if args.max_iters != run["max_iters"]:  # --extend-schedule: say where the schedule changed
        note = f"max_iters {run['max_iters']} -> {args.max_iters} at step {step}"
        note += ": the cosine schedule is recomputed from here" if args.lr_schedule == "cosine" else ""
        metrics.append({"iter": step, "tokens": tokens, "note": note})
        if master:
            print(note, file=sys.stderr)
    return step, tokens, metrics


def describe(model, args, world, device, tokens_per_step, train_data):
    """The run in a line or two, before the first step."""
    if not HAVE_MATPLOTLIB:
        print("note: matplotlib is not installed: no loss.png (pip install matplotlib)", file=sys.stderr)
    blocks = f", blocks of {args.diffusion_block}" if args.diffusion_block else ""
    method = (
        f", shift {not args.no_shift}, anneal {args.anneal_steps} steps{blocks}"
        if args.objective == "diffusion"
        else ""
    )
    where = f"{world} process(es) on {device.type}, {args.dtype}, {tokens_per_step:,} tokens/step"
    params = sum(p.numel() for p in model.parameters())  # a tied weight once
    print(f"{params / 1e6:.2f}M parameters, {where}, objective {args.objective}{method}", file=sys.stderr)
    if note := train_data.repetition_note(args.max_iters * tokens_per_step, args.data_dir):
        print(note, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Checks before any work: options, presets, resuming (skip these on a first reading)


def parse_args(argv=None):
    """Defaults < the run's own options (on resume) < the --config preset < the command line.

    The run's options and the preset are read as words of the command line that come before the
    user's, so every value passes the same checks (argparse's type=)."""
    p, argv = build_parser(), sys.argv[1:] if argv is None else [str(a) for a in argv]
    given, known = cli.given_options(p, argv), {action.dest for action in p._actions}
    diffusion_only = given.keys() & {"anneal_steps", "no_shift", "t_sampling", "complementary_masks", "masked_blocks"}
    preset = cli.read_preset(given["config"], known) if given.get("config") else {}
    given = {**preset, **given}
    saved, done = {}, 0
    if given.get("init_from") == "resume" and given.get("out_dir"):
        saved, done = read_run(given["out_dir"])
        saved = {k: v for k, v in saved.items() if k in known and k not in NOT_READ_BACK}
    args = p.parse_args(cli.as_argv(saved) + cli.as_argv(preset) + argv)
    if args.data_dir is None:
        p.error("the following arguments are required: --data-dir")
    if args.objective == "ar" and diffusion_only:  # a preset's annealing is for its diffusion run: not refused
        raise UserError(f"--{min(diffusion_only).replace('_', '-')} does nothing with --objective ar")
    world = int(os.environ.get("WORLD_SIZE", 1))
    args.grad_accum = args.grad_accum or world  # the global batch of one process, on any number of them
    if args.grad_accum % world:
        raise UserError(f"--grad-accum {args.grad_accum} is not a multiple of the {world} processes")
    cli.pick_device(args.device)  # a device this machine lacks: refused before any work
    if saved:
        check_resume(args, saved, done, given, lr_at)
    return args


def check_run(args):
    """Every check that needs no model -> (the checkpoint to start from, the resumed run's state or None)."""
    resume = args.init_from == "resume"
    init_dir = args.out_dir if resume else Path(args.init_from)
    if not resume and args.out_dir.exists():
        raise UserError(f"--out-dir {args.out_dir} already exists: pass --init-from resume to continue it, or another")
    if args.fsdp and "RANK" not in os.environ:
        raise UserError("--fsdp shards the model over torchrun's processes: start train.py with torchrun")
    if nested(args.data_dir, args.out_dir):  # each save replaces --out-dir whole
        raise UserError(f"--data-dir {args.data_dir} lies in --out-dir {args.out_dir}, which each save replaces whole")
    init_meta = read_meta(init_dir)
    state = read_train_state(init_dir) if resume else None
    model_block = init_meta["model"]["block_size"]
    args.block_size = args.block_size or min(model_block, 1024)
    if args.objective == "ar" and args.diffusion_block:
        raise UserError(f"--diffusion-block {args.diffusion_block} is block diffusion's: --objective ar has no blocks")
    if args.diffusion_block is None:  # a block-diffusion checkpoint trains on with its blocks
        args.diffusion_block = init_meta.get("diffusion_block") or 0 if args.objective == "diffusion" else 0
    if args.diffusion_block >= args.block_size:  # one block: the whole sequence, the paper
        args.diffusion_block = 0
    if args.ar_weight is None:  # a self-speculative checkpoint trains on with its AR weight
        args.ar_weight = init_meta.get("ar_weight", 0.0) if args.diffusion_block else 0.0
    if args.ar_weight and (not args.diffusion_block or args.objective == "ar" or args.no_shift):
        raise UserError("--ar-weight keeps the AR model of block diffusion: it needs --diffusion-block and the shift")
    if args.masked_blocks and not args.diffusion_block:
        raise UserError("--masked-blocks masks whole blocks of block diffusion: it needs --diffusion-block")
    check_data(args.data_dir, init_dir, init_meta, args.block_size, model_block)
    return init_dir, state


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # under torchrun every rank gets here: rank 0 says it, all leave the group
        if dist.is_initialized():
            dist.destroy_process_group()
        if os.environ.get("RANK", "0") != "0":  # rank 0 speaks first, then torchrun stops the others;
            time.sleep(5)  # a rank still here after that has an error of its own to say
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
