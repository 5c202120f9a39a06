"""Continual pre-training: turn an AR checkpoint into a diffusion LM (or train either from scratch).

    python train.py --init-from CKPT --data-dir DATA --out-dir OUT [--config config/X.json] [options]
    torchrun --nproc_per_node=8 train.py ... [--fsdp]          # same command, many GPUs / nodes

The diffusion objective, exactly as the paper and its official code:
  * per sequence t ~ U(1e-3, 1); every maskable token becomes the mask token with probability t;
  * shift: the logit at position i predicts token i+1, so the pretrained head is reused as is;
  * cross-entropy only where the target was masked, weighted by 1/t, divided by the number of
    masked targets;
  * attention annealing: at step s attention may follow causal OR Bernoulli(min(1, (s+1)/A)),
    one L×L draw per step shared by batch and heads; after A steps, full attention.
Position 0 is never noised: it plays the role of BOS at decoding time (no logit predicts it).

Everything random is a function of (seed, step, example index): a run is reproducible, resumes
exactly, and gives the same result on one process or many with the same global batch.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from model import UserError, anneal_hash, load_checkpoint, read_meta, save_checkpoint
from tokenizer import fingerprint

EPS = 1e-3  # t ~ U(EPS, 1)
EVAL_SEED = 1234  # evaluation noise is the same in every run, so numbers compare across runs

# ---------------------------------------------------------------------------------------------
# The method


def anneal_ratio(step, anneal_steps):
    return 1.0 if anneal_steps <= 0 else min(1.0, (step + 1) / anneal_steps)


def attention_at(step, anneal_steps, seq_len, seed, device, flex=None):
    """The attention of one training step: causal OR Bernoulli(ratio), the same draw for batch and heads.

    'full' once annealing is over (the fast SDPA path). During annealing a boolean (L, L) mask, or,
    given flex = AnnealFlex(...), a FlexAttention BlockMask computed from the same hash on the GPU.
    """
    ratio = anneal_ratio(step, anneal_steps)
    if ratio >= 1.0:
        return "full"
    step_seed, threshold = mix(seed, step) % 2**31, int(ratio * 2**32)
    if flex is not None:
        return flex(step_seed, threshold)
    q = torch.arange(seq_len, device=device)
    return (q[None, :] <= q[:, None]) | (anneal_hash(q[:, None], q[None, :], step_seed) < threshold)


class AnnealFlex:
    """Annealing BlockMasks for FlexAttention. The seed and threshold live in tensors that the mask_mod
    reads, so a new step changes their values, not the function: nothing recompiles."""

    def __init__(self, seq_len, device):
        from torch.nn.attention.flex_attention import create_block_mask

        self.create, self.seq_len, self.device = create_block_mask, seq_len, device
        self.seed = torch.zeros((), dtype=torch.long, device=device)
        self.threshold = torch.zeros((), dtype=torch.long, device=device)

        def mask_mod(b, h, q, k):
            return (k <= q) | (anneal_hash(q, k, self.seed) < self.threshold)

        self.mask_mod = mask_mod

    def __call__(self, step_seed, threshold):
        self.seed.fill_(step_seed)
        self.threshold.fill_(threshold)
        return self.create(self.mask_mod, None, None, self.seq_len, self.seq_len, device=self.device)


def diffusion_loss(model, x, maskable, t, noise, mask_id, attn="full", shift=True):
    """Masked-diffusion loss sums for one batch -> (Σ CE/t, Σ CE, number of masked targets).

    x, maskable, noise: (B, L); t: (B,). Token (b, i) is masked where maskable and noise < t[b].
    The loss is Σ CE/t / n (the paper's), the unweighted CE Σ CE / n.
    """
    masked = maskable & (noise < t[:, None])
    xt = x.masked_fill(masked, mask_id)
    if shift:  # logit i predicts token i+1: select position i where token i+1 was masked
        target_mask = masked[:, 1:]
        where = F.pad(target_mask, (0, 1))
        targets, weights = x[:, 1:][target_mask], (1 / t)[:, None].expand_as(target_mask)[target_mask]
    else:  # the ablation: logit i predicts token i
        where, targets, weights = masked, x[masked], (1 / t)[:, None].expand_as(masked)[masked]
    ce = F.cross_entropy(model(xt, attn=attn, where=where), targets, reduction="none")
    return (weights * ce).sum(), ce.sum(), masked.sum()


def ar_loss(model, x):
    """Next-token cross-entropy sums -> (Σ CE, Σ CE, number of targets), in the same form as diffusion_loss."""
    where = torch.ones_like(x, dtype=torch.bool)
    where[:, -1] = False
    ce = F.cross_entropy(model(x, attn="causal", where=where), x[:, 1:].reshape(-1), reduction="none")
    return ce.sum(), ce.sum(), torch.tensor(ce.numel(), device=x.device)


def mix(*ints):
    """A 63-bit seed from integers (a splitmix-style hash): independent streams per (seed, step, example)."""
    h = 0x9E3779B97F4A7C15
    for i in ints:
        h = ((h ^ (i & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Data


class Data:
    """Token memmaps from data/prepare.py: random windows (pre-training) or fixed rows with a source mask (SFT)."""

    def __init__(self, data_dir, split, block_size):
        info = json.loads((Path(data_dir) / "meta.json").read_text())
        self.tokens = np.memmap(Path(data_dir) / f"{split}.bin", dtype=info["dtype"], mode="r")
        self.sft, self.block_size = info["sft"], block_size
        if self.sft:
            self.tokens = self.tokens.reshape(-1, info["block_size"])
            self.src = np.memmap(Path(data_dir) / f"{split}_src.bin", dtype=np.uint8, mode="r").reshape(self.tokens.shape)
            self.n = len(self.tokens)
        else:
            self.n = len(self.tokens) - block_size + 1  # window starts

    def example(self, i):
        """(tokens, maskable) of example i: window start i (pre-training) or row i (SFT)."""
        if self.sft:
            x = torch.from_numpy(self.tokens[i].astype(np.int64))
            maskable = torch.from_numpy(self.src[i] == 0)
        else:
            x = torch.from_numpy(self.tokens[i : i + self.block_size].astype(np.int64))
            maskable = torch.ones(self.block_size, dtype=torch.bool)
        maskable[0] = False  # the anchor: never noised, as BOS at decoding time
        return x, maskable

    def batch(self, indices, ts, seeds, device):
        """Stack examples with their noise levels t and the uniforms that decide which tokens are masked."""
        xs, ms, noise = [], [], []
        for i, s in zip(indices, seeds):
            x, m = self.example(i)
            xs.append(x)
            ms.append(m)
            noise.append(torch.rand(len(x), generator=torch.Generator().manual_seed(s)))
        move = lambda a: a.to(device, non_blocking=True)  # noqa: E731
        return move(torch.stack(xs)), move(torch.stack(ms)), move(torch.tensor(ts, dtype=torch.float32)), move(torch.stack(noise))

    def train_batch(self, seed, step, micro_index, batch_size, device):
        """Micro-batch `micro_index` of step `step`: every example drawn from its own (seed, step, example) stream."""
        indices, ts, seeds = [], [], []
        for b in range(batch_size):
            g = torch.Generator().manual_seed(mix(seed, step, micro_index * batch_size + b))
            indices.append(int(torch.randint(self.n, (1,), generator=g)))
            ts.append(EPS + (1 - EPS) * float(torch.rand(1, generator=g)))
            seeds.append(int(torch.randint(2**62, (1,), generator=g)))
        return self.batch(indices, ts, seeds, device)

    def eval_examples(self, count):
        """Evenly spaced examples with t on a fixed grid over (EPS, 1): the same in every run."""
        indices = [k * max(1, self.n - 1) // max(1, count - 1) for k in range(count)] if count > 1 else [0]
        ts = [EPS + (1 - EPS) * (k + 0.5) / count for k in range(count)]
        return indices, ts, [mix(EVAL_SEED, k) for k in range(count)]


def check_data(data_dir, init_dir, init_meta, block_size, model_block_size):
    data_dir = Path(data_dir)
    if not (data_dir / "meta.json").is_file():
        raise UserError(f"data dir {data_dir} has no meta.json (make one with data/prepare.py)")
    info = json.loads((data_dir / "meta.json").read_text())
    for split in ("train", "val"):
        f = data_dir / f"{split}.bin"
        if not f.is_file() or f.stat().st_size == 0:
            raise UserError(f"{f} is missing or empty")
    if info["tokenizer_fingerprint"] != fingerprint(init_dir, init_meta):
        raise UserError(f"{data_dir} was tokenized with another tokenizer than {init_dir}'s; run data/prepare.py with --tokenizer {init_dir}")
    if block_size > model_block_size:
        raise UserError(f"--block-size {block_size} is beyond the model's {model_block_size} positions")
    if info["sft"] and block_size != info["block_size"]:
        raise UserError(f"SFT data rows have {info['block_size']} tokens; --block-size must match")
    if not info["sft"] and min(info["train_tokens"], info["val_tokens"]) < block_size:
        raise UserError(f"{data_dir} has fewer tokens than --block-size {block_size} in train or val")
    return info


# ---------------------------------------------------------------------------------------------
# Options


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", type=Path, help="JSON preset (config/*.json); command-line options override it")
    a("--init-from", required=True, help="checkpoint directory, or 'resume' to continue --out-dir")
    a("--reinit", action="store_true", help="random weights with the checkpoint's config and tokenizer (from scratch)")
    a("--data-dir", required=True, type=Path)
    a("--out-dir", required=True, type=Path)
    a("--objective", choices=["diffusion", "ar"], default="diffusion")
    a("--anneal-steps", type=int, default=0, help="steps to open the causal mask to full attention (0: full from the start)")
    a("--no-shift", action="store_true", help="ablation: the logit at i predicts token i instead of i+1")
    a("--max-iters", type=int, default=1000)
    a("--batch-size", type=int, default=8, help="sequences per micro-batch per process")
    a("--grad-accum", type=int, default=1, help="micro-batches per step over all processes (a multiple of the world size)")
    a("--block-size", type=int, default=0, help="sequence length (0: the model's maximum, at most 1024)")
    a("--lr", type=float, default=3e-4)
    a("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    a("--min-lr-ratio", type=float, default=0.1, help="cosine decays to lr × this")
    a("--warmup-iters", type=int, default=0)
    a("--weight-decay", type=float, default=0.1)
    a("--grad-clip", type=float, default=1.0, help="0 disables")
    a("--eval-interval", type=int, default=100)
    a("--eval-iters", type=int, default=10, help="evaluation batches")
    a("--device", default="auto")
    a("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    a("--compile", action=argparse.BooleanOptionalAction, default=False)
    a("--fsdp", action=argparse.BooleanOptionalAction, default=False, help="shard parameters, gradients and optimizer state (FSDP2)")
    a("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    a("--seed", type=int, default=0)
    return p


def parse_args(argv=None):
    p = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    config_path = pre.parse_known_args(argv)[0].config
    if config_path:  # the preset's values become defaults, so the command line still wins
        try:
            preset = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read --config {config_path}: {e}") from None
        known = {act.dest for act in p._actions}
        preset = {k.replace("-", "_"): v for k, v in preset.items() if not k.startswith("_")}
        if set(preset) - known:
            raise UserError(f"{config_path}: unknown options {sorted(set(preset) - known)}")
        p.set_defaults(**preset)
    args = p.parse_args(argv)
    positive = ["max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ["anneal_steps", "warmup_iters", "block_size", "weight_decay", "grad_clip"]:
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    if not args.lr > 0 or not 0 <= args.min_lr_ratio <= 1:
        raise UserError("--lr must be positive and --min-lr-ratio in [0, 1]")
    return args


def lr_at(step, args):
    if step < args.warmup_iters:
        return args.lr * (step + 1) / (args.warmup_iters + 1)
    if args.lr_schedule == "constant":
        return args.lr
    progress = (step - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------------------------------------
# Speed accounting

GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def matmul_peak(device, dtype, n=1024, repeats=4):
    """FLOP/s of a large square matmul measured now: the honest MFU denominator on any machine."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def peak_flops(device, dtype):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_BF16_PEAK.items():
            if key in name and dtype == torch.bfloat16:
                return peak
    return matmul_peak(device, dtype)


# ---------------------------------------------------------------------------------------------
# Distributed setup and state dicts


def setup_distributed(args):
    """-> (rank, world, device). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK."""
    if "RANK" not in os.environ:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        return 0, 1, device
    backend = "nccl" if torch.cuda.is_available() and args.device in ("auto", "cuda") else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def wrap(model, args, device, world):
    """FSDP2 (each block, then the root) or DDP when there are several processes; then compile."""
    model.checkpointing = args.activation_checkpointing
    if args.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        policy = bf16 if args.dtype == "bfloat16" else MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mp_policy=policy)
        model = fully_shard(model, mp_policy=policy)
    elif world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if args.compile else model


def make_optimizer(model, args, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda" and not args.fsdp
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def full_state(model, optimizer):
    """Full (unsharded) model and optimizer state on CPU, keyed by parameter name; a collective under DDP/FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    resume = args.init_from == "resume"
    init_dir = args.out_dir if resume else Path(args.init_from)
    if not resume and args.out_dir.exists():
        raise UserError(f"--out-dir {args.out_dir} already exists: pass --init-from resume to continue it, or another --out-dir")
    init_meta = read_meta(init_dir)
    if resume and not (init_dir / "train_state.pt").is_file():
        raise UserError(f"{init_dir} has no train_state.pt: not a train.py output to resume")
    model_block = init_meta["model"]["block_size"]
    args.block_size = args.block_size or min(model_block, 1024)
    check_data(args.data_dir, init_dir, init_meta, args.block_size, model_block)

    rank, world, device = setup_distributed(args)
    if args.grad_accum % world:
        raise UserError(f"--grad-accum {args.grad_accum} is not a multiple of the {world} processes")
    master = rank == 0
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype) or (
        torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32)
    args.dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    model, meta = load_checkpoint(init_dir, device="cpu")  # on resume: the weights of the last save
    if args.reinit and not resume:
        torch.manual_seed(args.seed)
        model = type(model)(model.cfg)
    raw_model = model.to(device).train()
    model = wrap(raw_model, args, device, world)
    optimizer = make_optimizer(model, args, device)
    step, tokens, metrics = 0, 0, []
    if resume:
        state = torch.load(init_dir / "train_state.pt", map_location="cpu", weights_only=True)
        load_optimizer_state(model, optimizer, state["optimizer"])
        step, tokens = state["step"], state["tokens"]
        metrics = [json.loads(line) for line in (init_dir / "metrics.jsonl").read_text().splitlines() if line]

    train_data = Data(args.data_dir, "train", args.block_size)
    val_data = Data(args.data_dir, "val", args.block_size)
    mask_id, shift = meta["mask_token_id"], not args.no_shift
    diffusion = args.objective == "diffusion"
    accum = args.grad_accum // world
    tokens_per_step = args.batch_size * args.block_size * args.grad_accum

    def loss_sums(x, maskable, t, noise, attn):
        with autocast:
            if diffusion:
                return diffusion_loss(model, x, maskable, t, noise, mask_id, attn, shift)
            return ar_loss(model, x)

    @torch.no_grad()
    def evaluate():
        """Validation at fixed windows and a fixed grid of t (diffusion: full attention, the final model)."""
        model.eval()
        count = args.eval_iters * args.batch_size
        indices, ts, seeds = val_data.eval_examples(count)
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # Σ CE/t, Σ CE, n masked, n maskable
        n_batches = -(-count // args.batch_size)
        for j in range(rank, -(-n_batches // world) * world, world):  # every rank runs as many forwards (FSDP)
            sl = slice(j * args.batch_size, (j + 1) * args.batch_size) if j < n_batches else slice(0, args.batch_size)
            x, maskable, t, noise = val_data.batch(indices[sl], ts[sl], seeds[sl], device)
            weighted, ce, n = loss_sums(x, maskable, t, noise, "full")
            n_targets = maskable.sum() if diffusion else n  # every maskable token is some target
            sums += torch.stack([weighted, ce, n, n_targets]).double() * (j < n_batches)
        if world > 1:
            dist.all_reduce(sums)
        model.train()
        w, ce, n, n_all = sums.tolist()
        # Σ CE/t over all maskable positions estimates the ELBO: an upper bound on NLL in nats/token.
        return {"val_loss": w / n, "val_loss_unweighted": ce / n, "val_nll_bound": w / n_all}

    def save():
        model_state, optim_state = full_state(model, optimizer)
        if not master:
            return
        out_meta = {k: v for k, v in meta.items() if k not in ("model", "training")}
        out_meta.update(objective=args.objective, shift=shift if diffusion else True,
                        training={"step": step, "tokens": tokens, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})
        out_meta["model"] = meta["model"]
        writers = {
            "train_state.pt": lambda f: torch.save({"step": step, "tokens": tokens, "optimizer": optim_state}, f),
            "metrics.jsonl": lambda f: f.write_text("".join(json.dumps(m) + "\n" for m in metrics)),
        }
        if plot_available():
            seen = [m["tokens"] for m in metrics]
            curves = {label: (seen, [m[key] for m in metrics]) for key, label in
                      [("val_loss", "val loss (CE/t, the paper's)"), ("val_loss_unweighted", "val masked CE"),
                       ("val_nll_bound", "val NLL bound (nats/token)")]}
            writers["loss.png"] = lambda f: plot(curves, f, "nats")
        save_checkpoint(args.out_dir, model_state, out_meta, tokenizer_from=init_dir, overwrite=True, extra=writers)

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    n_params = raw_model.num_params()
    flops_per_step = raw_model.flops_per_token(args.block_size, logit_fraction=0.5 if diffusion else 1.0) * tokens_per_step
    peak = peak_flops(device, dtype) * world
    if master:
        print(f"{n_params / 1e6:.2f}M parameters, {world} process(es) on {device.type}, {args.dtype}, "
              f"{tokens_per_step:,} tokens/step, objective {args.objective}"
              f"{'' if not diffusion else f', shift {shift}, anneal {args.anneal_steps} steps'}", file=sys.stderr)
    if step == 0:
        result = evaluate()
        if master:
            metrics.append({"iter": 0, "tokens": 0, **result})
            print(f"step 0: val loss {result['val_loss']:.4f} (nll bound {result['val_nll_bound']:.4f})", file=sys.stderr)

    from tqdm import tqdm

    flex = AnnealFlex(args.block_size, device) if device.type == "cuda" and diffusion and step < args.anneal_steps else None
    bar = tqdm(total=args.max_iters, initial=step, disable=not master, file=sys.stderr, dynamic_ncols=True)
    log = lambda message: bar.write(message, file=sys.stderr)  # noqa: E731
    t_last, steps_timed = time.perf_counter(), 0
    while step < args.max_iters:
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        attn = attention_at(step, args.anneal_steps, args.block_size, args.seed, device, flex) if diffusion else "causal"
        running = torch.zeros(3, dtype=torch.float64, device=device)  # loss, unweighted CE, stop flag
        for micro in range(accum):
            last = micro == accum - 1
            if args.fsdp:
                model.set_requires_gradient_sync(last)
            sync = contextlib.nullcontext() if last or world == 1 or args.fsdp else model.no_sync()
            with sync:
                x, maskable, t, noise = train_data.train_batch(args.seed, step, micro * world + rank, args.batch_size, device)
                weighted, ce, n = loss_sums(x, maskable, t, noise, attn)
                loss = weighted / n.clamp(min=1)
                (loss / accum).backward()
            running[0] += loss.detach().double() / accum
            running[1] += (ce / n.clamp(min=1)).detach().double() / accum
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        running[2] = float(stop["signal"] is not None)
        if world > 1:
            dist.all_reduce(running)
            running[:2] /= world
        train_loss, train_ce = running[0].item(), running[1].item()
        if not math.isfinite(train_loss):
            optimizer.zero_grad(set_to_none=True)
            if master:
                print(f"\nerror: loss is {train_loss} at step {step}; stopping. The last good checkpoint in {args.out_dir} is kept.",
                      file=sys.stderr)
            sys.exit(1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += tokens_per_step
        steps_timed += 1
        if master:
            elapsed = time.perf_counter() - t_last
            tps = tokens_per_step * steps_timed / elapsed
            bar.set_postfix(loss=f"{train_loss:.3f}", ce=f"{train_ce:.3f}", tok_s=f"{tps:,.0f}",
                            mfu=f"{flops_per_step * steps_timed / elapsed / peak:.1%}", refresh=False)
            bar.update(1)
        interrupted = running[2].item() > 0
        if step % args.eval_interval == 0 or step == args.max_iters or interrupted:
            if not interrupted:
                result = evaluate()
                if master:
                    metrics.append({"iter": step, "tokens": tokens, "train_loss": train_loss, "lr": lr, **result})
                    log(f"step {step}: train loss {train_loss:.4f}, val loss {result['val_loss']:.4f} "
                              f"(unweighted {result['val_loss_unweighted']:.4f}, nll bound {result['val_nll_bound']:.4f})")
            save()
            t_last, steps_timed = time.perf_counter(), 0
        if interrupted:
            if master:
                log(f"stopped by signal at step {step}; saved {args.out_dir} (continue with --init-from resume)")
            break
    bar.close()
    if world > 1:
        dist.destroy_process_group()
    return metrics


def plot_available():
    try:
        import matplotlib  # noqa: F401

        return True
    except ImportError:
        return False


def plot(curves, path, ylabel, title=None):
    """Curves {label: (training tokens, values)} as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (tokens, values) in curves.items():
        ax.plot(tokens, values, label=label)
    ax.set(xlabel="training tokens", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
