"""Checks that need a CUDA device (skipped elsewhere): run with `python -m pytest -q tests/test_gpu.py` on a GPU, and
`-m slow` for lab/gpu_check.py whole (about 5 minutes on an H100; tests/test_gpu_check.py runs it tiny on a CPU)."""

import json

import pytest
import torch

from conftest import run
from model import ModelConfig, Transformer, attention_at, diffusion_loss
from support.flex import AnnealFlex

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_flex_annealing_matches_boolean_mask_forward_and_backward():
    torch.manual_seed(0)
    L = 256
    cfg = ModelConfig(arch="llama", vocab_size=512, block_size=L, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = Transformer(cfg).cuda()
    x = torch.randint(0, 511, (2, L), device="cuda")
    maskable = torch.ones_like(x, dtype=torch.bool)
    maskable[:, 0] = False
    t, noise = torch.full((2,), 0.5, device="cuda"), torch.rand(2, L, device="cuda")
    grads = []
    for flex in (AnnealFlex(L, "cuda"), None):
        model.zero_grad()
        s, _, n = diffusion_loss(model, x, maskable, t, noise, 511, attention_at(30, 100, L, 1, "cuda", flex))
        (s / n).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-3)


def test_bf16_compiled_training_step_runs():
    cfg = ModelConfig(arch="gpt2", vocab_size=1000, block_size=128, n_layer=2, n_head=4, n_embd=128)
    model = Transformer(cfg).cuda()
    compiled = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 999, (4, 128), device="cuda")
    maskable = torch.ones_like(x, dtype=torch.bool)
    maskable[:, 0] = False
    flex = AnnealFlex(128, "cuda")
    losses = []
    for step in range(6):
        noise, t = torch.rand(4, 128, device="cuda"), torch.rand(4, device="cuda").clamp(min=0.1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            s, _, n = diffusion_loss(compiled, x, maskable, t, noise, 999, attention_at(step, 4, 128, 0, "cuda", flex))
        (s / n).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append((s / n).item())
    assert all(torch.isfinite(torch.tensor(losses)))


def test_decoding_on_cuda_matches_cpu_where_it_is_deterministic():
    """The sort-free nucleus and the scattered-position cache on the device: the same as on the CPU."""
    from sample import Decoding, Sampling, Trained, generate
    from support.sampling import nucleus

    probs = (torch.randn(16, 5000) * 2).softmax(-1)
    assert torch.equal(nucleus(probs.cuda(), 0.9).cpu(), nucleus(probs, 0.9))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(arch="llama", vocab_size=64, block_size=64, n_layer=2, n_head=4, n_embd=32)).eval()
    decoding = Decoding(8, "confidence", Sampling(greedy=True), cache=True)
    cpu, _ = generate(model, [0, 3], 16, decoding, Trained(63), suffix=[5, 6])
    cuda, _ = generate(model.cuda(), [0, 3], 16, decoding, Trained(63), suffix=[5, 6])
    assert torch.equal(cuda.cpu(), cpu)


@pytest.mark.slow
def test_gpu_check_passes_every_row(tmp_path):
    """The one command for a lent GPU, as lab/README.md gives it: every row there, none FAIL."""
    proc = run("lab/gpu_check.py", "--json", tmp_path / "rows.json", check=False)
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r for r in rows if r["result"].startswith("FAIL")] == [] and proc.returncode == 0, proc.stdout
    assert {r["check"] for r in rows} == {"flex", "train", "decode", "ddp"}
    assert all(r["grad_diff"] is not None for r in rows if r["check"] == "flex")  # the backward ran too
