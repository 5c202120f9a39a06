"""How a run reports itself beyond the progress bar: its curves as a PNG (train.py's loss.png, the lab's plots),
the FLOPs and peak FLOP/s of its MFU, and sample.py's --show.
"""

import importlib.util
import shutil
import sys
import time

import torch

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def plot_curves(curves, path, ylabel, title=None):
    """Curves {label: (training tokens, values)} as a PNG, as train.py's loss.png (needs matplotlib)."""
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


GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def matmul_peak(device, dtype, n=1024, repeats=4):
    """FLOP/s of a large square matmul measured now: the honest MFU denominator on any machine."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for timed in (False, True):  # a warm-up, then the measurement
        t0 = time.perf_counter()
        for _ in range(repeats if timed else 1):
            a @ a
        sync()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def peak_flops(device, dtype):
    """The datasheet's dense bf16 peak of a known GPU, else a matmul measured now."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_BF16_PEAK.items():
            if key in name:
                return peak
    return matmul_peak(device, dtype)


def flops_per_token(model, seq_len, logit_fraction=1.0):
    """Training FLOPs (forward + backward = 3 × forward) per token of a Transformer at sequence length seq_len.

    Matmuls cost 2 FLOPs per weight per token; attention scores and values add
    2 × 2 × n_layer × seq_len × n_head × head_dim. logit_fraction is the share of positions
    whose logits are computed (training computes them only at masked targets).
    """
    cfg, pos_emb = model.cfg, model.pos_emb
    embeddings = model.tok_emb.weight.numel() + (pos_emb.weight.numel() if pos_emb is not None else 0)
    head = cfg.vocab_size * cfg.n_embd
    body = sum(p.numel() for p in model.parameters()) - embeddings - (0 if cfg.tie_embeddings else head)
    attention = 2 * cfg.n_layer * seq_len * cfg.n_head * cfg.head_dim
    return 3 * (2 * body + 2 * head * logit_fraction + 2 * attention)


class Show:
    """sample.py --show: the first sample at each step, masks drawn: in place on a terminal, line by line when piped."""

    def __init__(self, tok, total_steps):
        self.tok, self.total, self.lines = tok, total_steps, 0
        self.tty = sys.stderr.isatty()

    def __call__(self, x, step):
        text = self.tok.decode([i for i in x[0].tolist() if i != self.tok.bos_id], show_masks=True)
        if not self.tty:
            print(f"[step {step}/{self.total}] {text}", file=sys.stderr)
            return
        if self.lines:  # move up over the previous frame and clear it
            sys.stderr.write(f"\x1b[{self.lines}F\x1b[J")
        frame = f"[step {step}/{self.total}]\n{text}"
        width = shutil.get_terminal_size().columns
        self.lines = sum(max(1, -(-len(line) // width)) for line in frame.split("\n"))
        sys.stderr.write(frame + "\n")
        sys.stderr.flush()
