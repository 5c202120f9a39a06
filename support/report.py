"""How a run reports itself beyond the progress bar: its curves as a PNG (train.py's loss.png, the lab's plots),
and the peak FLOP/s that its MFU is measured against.
"""

import importlib.util
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
