"""train.py and data/prepare.py: the loss by hand, annealing, SFT source masks, DDP/FSDP, resume, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from checkpoint import load_checkpoint
from conftest import ASSETS, ROOT, STORIES_BIN, STORIES_TOK, assert_user_error, run
from data.shards import Data
from model import EPS, anneal_ratio, attention_at, diffusion_loss
from train import lr_at, parse_args

STORIES_TXT = ASSETS / "text" / "tinystories_val.txt"
TINY = ["--max-iters", "6", "--eval-interval", "3", "--batch-size", "4", "--block-size", "64", "--eval-iters", "2"]


@pytest.fixture(scope="module")
def stories_data(stories_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tinystories"  # in several shards: windows run across them
    run("data/prepare.py", "--tokenizer", stories_ckpt, "--out", out, STORIES_TXT, "--shard-tokens", "50000")
    assert len(json.loads((out / "meta.json").read_text())["shards"]["train"]) > 3
    return out


class TableModel:
    """A stub denoiser: fixed logits per position; records what it was given."""

    def __init__(self, logits):
        self.logits = logits

    def __call__(self, xt, attn, where, positions=None):
        self.xt, self.attn, self.where = xt, attn, where
        return self.logits.expand(xt.shape[0], -1, -1)[where]


def test_diffusion_loss_by_hand():
    torch.manual_seed(0)
    V, M = 7, 6
    logits = torch.randn(1, 4, V)
    x = torch.tensor([[1, 2, 3, 4]])
    maskable = torch.tensor([[False, True, True, True]])
    t = torch.tensor([0.5])
    noise = torch.tensor([[0.0, 0.1, 0.7, 0.2]])  # position 0 is below t but not maskable
    stub = TableModel(logits)
    weighted, ce, n = diffusion_loss(stub, x, maskable, t, noise, M)
    assert stub.xt.tolist() == [[1, M, 3, M]] and n.item() == 2
    # shift: the logit at 0 predicts token 1, the logit at 2 predicts token 3
    ce0 = F.cross_entropy(logits[0, 0], torch.tensor(2))
    ce2 = F.cross_entropy(logits[0, 2], torch.tensor(4))
    torch.testing.assert_close(ce, ce0 + ce2)
    torch.testing.assert_close(weighted / n, (ce0 + ce2) / 0.5 / 2)
    # no shift: the logit at i predicts token i
    weighted, ce, n = diffusion_loss(stub, x, maskable, t, noise, M, shift=False)
    expected = F.cross_entropy(logits[0, 1], torch.tensor(2)) + F.cross_entropy(logits[0, 3], torch.tensor(4))
    torch.testing.assert_close(ce, expected)
    torch.testing.assert_close(weighted, expected * 2)


def test_loss_normalised_over_the_batch_with_per_sequence_weights():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 9)
    x = torch.tensor([[0, 1, 2, 3, 4], [0, 5, 6, 7, 8]])
    maskable = torch.ones(2, 5, dtype=torch.bool)
    maskable[:, 0] = False
    t = torch.tensor([0.25, 0.5])
    noise = torch.tensor([[0, 0.1, 0.9, 0.9, 0.9], [0, 0.1, 0.2, 0.3, 0.9]])  # 1 and 3 masked targets
    weighted, ce, n = diffusion_loss(TableModel(logits), x, maskable, t, noise, 8)
    per = [F.cross_entropy(logits[0, i - 1], x[b, i]) for b, i in [(0, 1), (1, 1), (1, 2), (1, 3)]]
    assert n.item() == 4
    torch.testing.assert_close(weighted / n, (per[0] / 0.25 + sum(per[1:]) / 0.5) / 4)


def test_annealing_schedule():
    assert anneal_ratio(0, 10) == pytest.approx(0.1) and anneal_ratio(4, 10) == pytest.approx(0.5)
    assert anneal_ratio(9, 10) == 1.0 and anneal_ratio(5000, 10) == 1.0 and anneal_ratio(0, 0) == 1.0
    assert attention_at(9, 10, 64, 0, "cpu") == "full" and attention_at(0, 0, 64, 0, "cpu") == "full"
    L = 256
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for step, ratio in [(0, 0.01), (29, 0.3), (69, 0.7)]:
        m = attention_at(step, 100, L, seed=3, device="cpu")
        assert m.dtype == torch.bool and m.shape == (L, L)
        assert m[causal].all()  # causal is always allowed
        assert abs(m[~causal].float().mean().item() - ratio) < 0.02
        assert torch.equal(m, attention_at(step, 100, L, seed=3, device="cpu"))  # reproducible
    assert not torch.equal(attention_at(30, 100, L, 3, "cpu"), attention_at(31, 100, L, 3, "cpu"))


def test_lr_schedule():
    args = parse_args(
        [
            "--init-from",
            "x",
            "--data-dir",
            "d",
            "--out-dir",
            "o",
            "--lr",
            "1.0",
            "--warmup-iters",
            "10",
            "--max-iters",
            "110",
        ]
    )
    assert lr_at(0, args) == pytest.approx(1 / 11) and lr_at(10, args) == pytest.approx(1.0)
    assert lr_at(60, args) == pytest.approx(0.55) and lr_at(110, args) == pytest.approx(0.1)


def test_presets_parse():
    for preset in sorted((ROOT / "config").glob("*.json")):
        args = parse_args(["--config", str(preset), "--init-from", "x", "--data-dir", "d", "--out-dir", "o"])
        assert args.lr > 0
    gpt = parse_args(
        [
            "--config",
            str(ROOT / "config" / "diffugpt-s.json"),
            "--init-from",
            "x",
            "--data-dir",
            "d",
            "--out-dir",
            "o",
            "--lr",
            "1e-4",
        ]
    )
    assert gpt.anneal_steps == 10000 and gpt.warmup_iters == 2000 and gpt.lr == 1e-4  # the command line wins
    llama = parse_args(
        [
            "--config",
            str(ROOT / "config" / "diffullama-7b.json"),
            "--init-from",
            "x",
            "--data-dir",
            "d",
            "--out-dir",
            "o",
        ]
    )
    assert llama.anneal_steps == 0 and llama.lr == 2e-5 and llama.lr_schedule == "constant" and llama.block_size == 2048
    # the official optimizers: the HF Trainer's AdamW for DiffuGPT, DeepSpeed's Adam config for DiffuLLaMA
    assert (gpt.beta2, gpt.weight_decay, gpt.min_lr_ratio) == (0.999, 0.0, 0.0)
    assert (llama.beta2, llama.weight_decay, llama.warmup_iters) == (0.95, 0.1, 0)


def test_sft_source_tokens_are_never_noised(stories_ckpt, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": f"Tom had {i} apples.", "response": f"He ate {i}."}) + "\n" for i in range(40))
    )
    sft = tmp_path / "sft"
    run(
        "data/prepare.py",
        "--tokenizer",
        stories_ckpt,
        "--out",
        sft,
        "--sft",
        "--block-size",
        "32",
        pairs,
        "--shard-tokens",
        "200",
    )
    data = Data(sft, "train", 32)
    x, maskable, _, noise = data.train_batch(0, 0, 0, 16, "cpu")
    shards = json.loads((sft / "meta.json").read_text())["shards"]["train"]  # the files as written, several
    read = lambda key, dtype: np.concatenate([np.fromfile(sft / s[key], dtype) for s in shards]).reshape(-1, 32)
    rows, src = torch.from_numpy(read("file", np.uint16).astype(np.int64)), torch.from_numpy(read("src_file", np.uint8))
    src = src.bool()
    assert len(shards) > 1 and data.n == len(rows) and src.any() and (~src).any()
    stub = TableModel(torch.zeros(1, 32, 513))
    diffusion_loss(stub, x, maskable, torch.ones(16), noise, 512)  # t = 1: every maskable token is masked
    for row, xt in zip(x, stub.xt):
        keep = src[next(k for k in range(len(rows)) if torch.equal(rows[k], row))].clone()
        keep[0] = True
        assert torch.equal(xt[keep], row[keep])  # the prompt (and BOS) untouched
        assert (xt[~keep] == 512).all()  # everything else noised


@pytest.mark.slow
def test_ddp_and_fsdp_match_one_process(stories_ckpt, stories_data, tmp_path):
    common = ["--init-from", stories_ckpt, "--data-dir", stories_data, *TINY, "--anneal-steps", "4"]
    run("train.py", *common, "--grad-accum", "2", "--out-dir", tmp_path / "one")
    run("train.py", *common, "--grad-accum", "2", "--out-dir", tmp_path / "one-compiled", "--compile")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        *map(str, common),
    ]
    # compiled against compiled: inductor's sums round otherwise than eager's, and Adam turns that into 8e-5 in 6 steps
    runs = [("ddp", [], "one"), ("fsdp", ["--fsdp"], "one"), ("ddp-compiled", ["--compile"], "one-compiled")]
    for name, extra, reference in runs:  # no --grad-accum: it defaults to the 2 processes
        proc = subprocess.run(
            [*torchrun, "--out-dir", str(tmp_path / name), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        a, b = (load_file(tmp_path / run_dir / "model.safetensors") for run_dir in (reference, name))
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, name
    model, meta = load_checkpoint(tmp_path / "fsdp")  # the sharded run's checkpoint loads in one process
    assert meta["objective"] == "diffusion" and meta["training"]["step"] == 6
    assert meta["training"]["args"]["grad_accum"] == 2
    proc = subprocess.run(  # a bad option: said once, by rank 0, and every process leaves
        [*torchrun, "--out-dir", str(tmp_path / "bad"), "--grad-accum", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and proc.stderr.count("error: --grad-accum 3 is not a multiple") == 1, proc.stderr
    assert not (tmp_path / "bad").exists()


def test_resume_continues_the_same_run(stories_ckpt, stories_data, tmp_path):
    out = tmp_path / "ar"
    run(
        "train.py",
        "--init-from",
        stories_ckpt,
        "--data-dir",
        stories_data,
        "--out-dir",
        out,
        "--objective",
        "ar",
        *TINY,
    )
    resume = ["train.py", "--init-from", "resume", "--out-dir", out]
    before = (out / "model.safetensors").read_bytes()
    for extra, words in [
        (["--objective", "diffusion"], ["--objective diffusion contradicts", "--objective ar"]),
        (["--lr", "1e-3"], ["--lr 0.001 contradicts", "--lr 0.0003"]),
        (["--max-iters", "4"], ["--max-iters 4 is below the 6 steps"]),
        (["--max-iters", "6"], ["has done its 6 steps"]),
        (["--max-iters", "9"], ["changes the cosine schedule", "--extend-schedule"]),
    ]:
        assert_user_error(run(*resume, *extra, check=False), *words)
    assert (out / "model.safetensors").read_bytes() == before  # nothing written
    # no --objective, no --data-dir: the run's own options; a larger --max-iters, with the flag a cosine needs
    run(*resume, "--max-iters", "9", "--extend-schedule", "--eval-interval", "100")
    meta = json.loads((out / "config.json").read_text())
    assert meta["objective"] == "ar" and meta["training"]["step"] == 9
    assert meta["training"]["args"]["init_from"] == str(stories_ckpt) and meta["training"]["args"]["max_iters"] == 9
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [0, 3, 6, 6, 9]
    assert metrics[3]["note"] == "max_iters 6 -> 9 at step 6: the cosine schedule is recomputed from here"
    # AR losses throughout: the unweighted and weighted validation losses of an AR run are the same number
    assert all(m["val_loss"] == m["val_loss_unweighted"] for m in metrics if "val_loss" in m)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(stories_ckpt, stories_data, tmp_path):
    common = [
        "--init-from",
        stories_ckpt,
        "--data-dir",
        stories_data,
        "--batch-size",
        "4",
        "--block-size",
        "64",
        "--eval-iters",
        "2",
        "--eval-interval",
        "5",
        "--max-iters",
        "40",
        "--anneal-steps",
        "20",
        "--warmup-iters",
        "5",
    ]
    run("train.py", *common, "--out-dir", tmp_path / "whole")
    cmd = [sys.executable, "train.py", *map(str, common), "--out-dir", str(tmp_path / "cut")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp_path / "cut" / "config.json"
    while proc.poll() is None and not (config.is_file() and json.loads(config.read_text())["training"]["step"] >= 10):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(config.read_text())["training"]["step"] < 40
    run("train.py", *[c if c != stories_ckpt else "resume" for c in common], "--out-dir", tmp_path / "cut")
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    curve = lambda d: [
        (m["iter"], m["val_loss"]) for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
    ]  # noqa: E731
    whole, cut = curve(tmp_path / "whole"), curve(tmp_path / "cut")
    assert [i for i, _ in whole] == [i for i, _ in cut] == list(range(0, 41, 5))
    assert all(math.isclose(x, y, rel_tol=1e-6) for (_, x), (_, y) in zip(whole, cut))
    import importlib.util

    if importlib.util.find_spec("matplotlib"):  # the loss curve comes with every save
        assert (tmp_path / "cut" / "loss.png").stat().st_size > 1000


@pytest.mark.slow
def test_sigterm_saves_before_exit(stories_ckpt, stories_data, tmp_path):
    cmd = [
        sys.executable,
        "train.py",
        "--init-from",
        str(stories_ckpt),
        "--data-dir",
        str(stories_data),
        "--batch-size",
        "4",
        "--block-size",
        "64",
        "--eval-iters",
        "1",
        "--eval-interval",
        "100000",
        "--max-iters",
        "100000",
    ]
    proc = subprocess.Popen(
        [*cmd, "--out-dir", str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until it is training (the step-0 eval is printed first)
        line = proc.stderr.readline()
        if line.startswith("step 0"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # saved, then the shell's convention for a signal
    step = json.loads((tmp_path / "run" / "config.json").read_text())["training"]["step"]
    assert 0 < step < 100000 and "stopped by signal" in err


def test_an_lr_that_diverges_in_two_steps_stops_before_the_next_save(stories_ckpt, stories_data, tmp_path):
    """lr 1e30: the first update makes the weights huge (finite: RMSNorm keeps the loss finite), the second
    step's gradient is not finite: the run stops there, and the step-1 checkpoint stays as it was."""
    tiny = ["--batch-size", "4", "--block-size", "64", "--eval-iters", "1", "--eval-interval", "1"]
    args = ["--init-from", stories_ckpt, "--data-dir", stories_data, *tiny, "--max-iters", "20", "--lr", "1e30"]
    proc = run("train.py", *args, "--grad-clip", "0", "--out-dir", tmp_path / "run", check=False)
    assert_user_error(proc, "gradient norm nan at step 1", "diverged", "is kept")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["step"] == 1
    load_checkpoint(tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for m in metrics for v in m.values())


def test_one_writer_per_output(stories_ckpt, tmp_path):
    """convert.py, data/prepare.py, train.py and lab/miniature.py refuse an output that another writer holds,
    naming its PID, before any work; a lock file left by a dead process blocks nothing."""
    from support.files import sole_writer

    (tmp_path / "t.txt").write_text(STORIES_TXT.read_text()[:100_000])
    data = tmp_path / "data"
    commands = {
        "convert.py": lambda out: [STORIES_BIN, out, "--tokenizer", STORIES_TOK],
        "data/prepare.py": lambda out: [
            "--tokenizer",
            stories_ckpt,
            "--out",
            out,
            tmp_path / "t.txt",
            "--workers",
            "1",
        ],
        "train.py": lambda out: ["--init-from", stories_ckpt, "--data-dir", data, "--out-dir", out, *TINY],
        "lab/miniature.py": lambda out: ["--assets", ASSETS, "--out", out],
    }
    for script, args in commands.items():
        out = tmp_path / script.replace("/", "-")
        (tmp_path / f".{out.name}.lock").write_text("999999999\n")  # left by a killed writer: no lock held
        if script == "data/prepare.py":
            run(script, *args(data))  # the data train.py reads, through a stale lock file
        with sole_writer(out):  # another writer (this process, through another open file)
            t0 = time.perf_counter()
            proc = run(script, *args(out), check=False)
        assert_user_error(proc, "being written by another process", f"PID {os.getpid()}")
        assert time.perf_counter() - t0 < 5 and not out.exists(), script
    assert not list(tmp_path.glob(".*.lock"))  # each writer removes its lock file when it is done


@pytest.mark.slow
def test_a_second_train_run_on_one_out_dir_is_refused_and_a_killed_ones_lock_blocks_nothing(
    stories_ckpt, stories_data, tmp_path
):
    out, common = (
        tmp_path / "run",
        ["--init-from", stories_ckpt, "--data-dir", stories_data, "--out-dir", tmp_path / "run"],
    )
    long = [*common, "--batch-size", "4", "--block-size", "64", "--eval-iters", "1", "--eval-interval", "100000"]
    long += ["--max-iters", "100000"]  # no save before it is killed
    first = subprocess.Popen([sys.executable, "train.py", *map(str, long)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not first.stderr.readline().startswith("step 0"):
        pass
    t0 = time.perf_counter()
    second = run(
        "train.py", "--init-from", stories_ckpt, "--data-dir", stories_data, "--out-dir", out, *TINY, check=False
    )
    assert_user_error(second, "being written by another process", f"PID {first.pid}")
    assert time.perf_counter() - t0 < 1.0
    first.kill()
    first.wait()
    run(
        "train.py", "--init-from", stories_ckpt, "--data-dir", stories_data, "--out-dir", out, *TINY
    )  # its lock is gone


def test_save_refuses_non_finite_weights(stories_ckpt, tmp_path):
    """The last guard (a save after a signal evaluates nothing): weights with a NaN are never written."""
    import argparse

    from train import Diverged, Objective, save

    model, meta = load_checkpoint(stories_ckpt)
    with torch.no_grad():
        model.norm.weight[0] = math.nan
    optimizer, args = torch.optim.AdamW(model.parameters()), argparse.Namespace(out_dir=tmp_path / "run")
    with pytest.raises(Diverged, match="non-finite weights at step 7"):
        save(model, optimizer, meta, args, Objective("diffusion", 0, True), 7, 0, [], stories_ckpt, True)
    assert not (tmp_path / "run").exists()


def test_a_diverging_resume_keeps_the_last_good_checkpoint(stories_ckpt, stories_data, tmp_path):
    """An optimizer state whose next update blows the weights up: the run stops naming the step, and the
    checkpoint it resumed from is untouched, byte for byte."""
    tiny = ["--batch-size", "4", "--block-size", "64", "--eval-iters", "1", "--eval-interval", "1"]
    run(
        "train.py",
        "--init-from",
        stories_ckpt,
        "--data-dir",
        stories_data,
        *tiny,
        "--max-iters",
        "2",
        "--out-dir",
        tmp_path / "run",
    )
    before = {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()}
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    for moments in state["optimizer"]["state"].values():
        moments["exp_avg"].fill_(math.inf)  # Adam's next update makes every weight infinite
    torch.save(state, tmp_path / "run" / "train_state.pt")
    before["train_state.pt"] = (tmp_path / "run" / "train_state.pt").read_bytes()
    proc = run(
        "train.py",
        "--init-from",
        "resume",
        "--out-dir",
        tmp_path / "run",
        "--max-iters",
        "4",
        "--extend-schedule",
        check=False,
    )
    assert_user_error(proc, "at step 3", "diverged", "is kept")
    assert {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()} == before
    load_checkpoint(tmp_path / "run")


def test_prepare_bad_inputs(stories_ckpt, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    assert_user_error(
        run(
            "data/prepare.py", "--tokenizer", stories_ckpt, "--out", tmp_path / "o", tmp_path / "empty.txt", check=False
        ),
        "no train data",
    )
    (tmp_path / "bad.txt").write_bytes(b"hello \xff\xfe world\n\nmore")
    assert_user_error(
        run("data/prepare.py", "--tokenizer", stories_ckpt, "--out", tmp_path / "o", tmp_path / "bad.txt", check=False),
        "not UTF-8",
    )
    assert not (tmp_path / "o").exists()


def test_prepare_formats_and_workers(stories_ckpt, tmp_path):
    docs = [f"Lily saw a {w} dog." for w in ("big", "small", "red", "happy", "sad", "tall")]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("\n\n".join(docs[:2]))
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[2:4]))
    (tmp_path / "in" / "c.json").write_text(json.dumps([{"text": d} for d in docs[4:]]))
    for workers in ("1", "2"):
        run(
            "data/prepare.py",
            "--tokenizer",
            stories_ckpt,
            "--out",
            tmp_path / workers,
            "--workers",
            workers,
            "--val-fraction",
            "0.3",
            tmp_path / "in",
        )
    files = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "2").iterdir())
    assert all((tmp_path / "1" / f).read_bytes() == (tmp_path / "2" / f).read_bytes() for f in files)
    info = json.loads((tmp_path / "1" / "meta.json").read_text())
    assert info["documents"] == {"train": 4, "val": 2} and info["dtype"] == "uint16"

    from tokenizer import load_tokenizer

    tok = load_tokenizer(stories_ckpt)
    val = np.fromfile(tmp_path / "1" / "val-text-00000.bin", dtype=np.uint16).tolist()
    assert val == [1, *tok.encode(docs[0]), 2, 1, *tok.encode(docs[3]), 2]  # documents 0 and 3: every 3rd


def test_flex_attention_mask_equals_the_boolean_mask():
    """On GPU the annealing mask is a FlexAttention BlockMask from the same hash; check it here (forward, CPU)."""
    import warnings

    from model import ModelConfig, Transformer
    from support.flex import AnnealFlex

    warnings.simplefilter("ignore")  # eager FlexAttention warns that it is a slow reference
    L = 128
    model = Transformer(
        ModelConfig(arch="llama", vocab_size=50, block_size=2 * L, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    ).eval()
    idx = torch.randint(0, 50, (2, 2 * L))
    for block, ar, n in ((0, False, L), (16, False, 2 * L), (16, True, 2 * L)):  # the paper; blocks; AR kept
        flex = AnnealFlex(L, "cpu", block, ar)
        for step in (0, 40):
            with torch.no_grad():
                torch.testing.assert_close(
                    model(idx[:, :n], attn=attention_at(step, 100, L, 5, "cpu", flex, block, ar)),
                    model(idx[:, :n], attn=attention_at(step, 100, L, 5, "cpu", block=block, ar=ar)),
                    atol=1e-5,
                    rtol=1e-5,
                )


def test_parquet_documents_come_from_the_recipe_field(tmp_path):
    """StarCoder's parquet files keep their text under "content" (the diffullama recipe's field)."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow

    from data.corpus import texts

    pq.write_table(pyarrow.table({"content": ["def f():\n    return 1\n", "x = 2\n"]}), tmp_path / "code.parquet")
    assert list(texts([tmp_path / "code.parquet"], "content")) == ["def f():\n    return 1\n", "x = 2\n"]


def test_stratified_noise_levels_cover_each_step_evenly(stories_data):
    """--t-sampling stratified: a step's N examples (over its micro-batches) hold one t in each stratum
    [k/N, (k+1)/N) of (EPS, 1); the examples and their noise are those of the uniform sampler."""
    data, N, micro = Data(stories_data, "train", 32), 12, 4
    for step in range(3):
        uniform = [data.train_batch(0, step, m, micro, "cpu") for m in range(N // micro)]
        stratified = [data.train_batch(0, step, m, micro, "cpu", stratified_over=N) for m in range(N // micro)]
        t = torch.cat([b[2] for b in stratified])
        strata = ((t - EPS) / (1 - EPS) * N).floor().long()
        assert sorted(strata.tolist()) == list(range(N))
        assert torch.cat([b[2] for b in uniform]).tolist() != t.tolist()
        for u, s in zip(uniform, stratified):
            assert torch.equal(u[0], s[0]) and torch.equal(u[3], s[3])
