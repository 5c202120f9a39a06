"""Every command in the README runs, on tiny settings, so the README cannot rot.

Commands are taken from the README's ```bash blocks, in order, and run in a sandbox where the hub
is a local HTTP server serving tiny random models under the README's hub ids. Each command gets
tiny-size options appended (argparse: the last value wins); torchrun runs 2 local processes.
"""

import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading

import pytest
from test_families import tiny_family

from conftest import ASSETS, ROOT
from test_convert import tiny_gpt2, tiny_llama

TINY = {
    "train.py": "--max-iters 2 --eval-interval 1 --eval-iters 1 --batch-size 2 --block-size 32 --grad-accum 2 "
    "--warmup-iters 1 --anneal-steps 2",
    "sample.py": "--length 8 --steps 4",
    "lab/eval.py": "--limit 2 --mc 2 --length 8 --steps 4",
    "lab/miniature.py": f"--assets {ASSETS} --out mini --iters 4 --batch-size 2 --block-size 32 --eval-windows 2 "
    "--mc 2 --gen-steps 2,4 --gen-samples 2 --gen-length 8 --test-stories 4",
}
HUB_TASKS = "--lm-eval hellaswag,winogrande,piqa"  # lm-eval's tasks download their data: a local task instead
SOURCES = {
    "tinystories": "--source stories.txt",
    "fineweb": "--source web.jsonl",
    "diffullama": "--source slimpajama=web.jsonl --source starcoder=code.jsonl",
}


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_line = next(line for line in ci.splitlines() if "# test command" in line).split("#")[0].strip()
    assert f"pip install -r requirements-dev.txt && {test_line}" in readme_commands()


def test_the_readme_python_api_imports_as_written():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    imports = [line for b in blocks for line in b.splitlines() if line.startswith(("from ", "import "))]
    assert len(imports) >= 4
    exec("\n".join(imports), {})


def tiny_command(cmd):
    """The README command with tiny settings: local processes, small sizes, local corpus copies."""
    cmd = re.sub(
        r"--nnodes=\S+ --nproc_per_node=\S+ --rdzv-backend=\S+ --rdzv-endpoint=\S+",
        "--standalone --nproc_per_node=2",
        cmd,
    )
    cmd = cmd.replace("--nproc_per_node=8", "--nproc_per_node=2")
    script = next(
        (s for s in ["train.py", "sample.py", "lab/eval.py", "lab/miniature.py"] if f" {s}" in f" {cmd}"), None
    )
    if script:  # (AR decoding takes no --steps, AR training no --anneal-steps: they would be refused)
        tiny = TINY[script].removesuffix(" --steps 4") if " --ar" in cmd and script == "sample.py" else TINY[script]
        cmd += " " + (tiny.removesuffix(" --anneal-steps 2") if "--objective ar" in cmd else tiny)
    if "--init-from resume" in cmd:  # a resume continues past the finished tiny run
        cmd = cmd.replace("--max-iters 2", "--max-iters 3 --extend-schedule")
    cmd = cmd.replace(HUB_TASKS, f"--lm-eval diffu_story_choice --include-path {ROOT / 'tests' / 'lm_eval'}")
    if "prepare.py" in cmd and "--recipe" in cmd:
        cmd += " " + SOURCES[shlex.split(cmd)[shlex.split(cmd).index("--recipe") + 1]]
    if "prepare.py" in cmd and "--sft" in cmd:
        cmd += " --block-size 32"
    if "train.py" in cmd and "gsm8k" in cmd:
        cmd += " --block-size 32"
    return cmd


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    for name in [
        "model.py",
        "checkpoint.py",
        "tokenizer.py",
        "support",
        "formats",
        "convert.py",
        "train.py",
        "sample.py",
        "lab",
        "config",
        "requirements.txt",
    ]:
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepare.py").symlink_to(ROOT / "data" / "prepare.py")
    # the user's own files that the README's commands name
    shutil.copy(ASSETS / "stories260K" / "stories260K.bin", tmp_path)
    shutil.copy(ASSETS / "stories260K" / "tok512.model", tmp_path)
    stories = (ASSETS / "text" / "tinystories_val.txt").read_text().split("\n\n")[:40]
    (tmp_path / "stories.txt").write_text("\n\n".join(stories[:6]))
    (tmp_path / "data" / "test.txt").write_text("\n\n".join(stories[6:12]))
    (tmp_path / "prompts.jsonl").write_text(
        '{"prompt": "Once upon a time"}\n{"prompt": "Lily", "suffix": " The end."}\n'
    )
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    (tmp_path / "code.jsonl").write_text(
        "".join(json.dumps({"content": f"def f{i}(x):\n    return x * {i}\n"}) + "\n" for i in range(40))
    )
    (tmp_path / "tests" / "lm_eval").mkdir(parents=True)  # the local lm-eval task's data, where its YAML says
    shutil.copy(ROOT / "tests" / "lm_eval" / "stories.jsonl", tmp_path / "tests" / "lm_eval")
    (tmp_path / "my_tasks").mkdir()
    rolling = (ROOT / "tests" / "lm_eval" / "diffu_story_rolling.yaml").read_text()
    (tmp_path / "my_tasks" / "my_task.yaml").write_text(rolling.replace("task: diffu_story_rolling", "task: my_task"))
    lambada = (ASSETS / "eval" / "lambada_test.txt").read_text().splitlines()[:3]
    (tmp_path / "lambada_test.txt").write_text("\n".join(lambada) + "\n")
    (tmp_path / "hellaswag.jsonl").write_text(
        json.dumps({"context": "The cat", "choices": ["sat down.", "flew."], "label": 0}) + "\n"
    )
    (tmp_path / "gsm8k_train.json").write_text(
        json.dumps([{"instruction": f"What is {i} + 1?", "output": f"{i + 1}"} for i in range(30)])
    )
    # a hub on 127.0.0.1 with tiny random models under the README's ids
    site = tmp_path / "site"
    qwen = functools.partial(tiny_family, family="qwen2", tied=True)
    for repo, make in [
        ("gpt2", tiny_gpt2),
        ("gpt2-medium", tiny_gpt2),
        ("meta-llama/Llama-2-7b-hf", tiny_llama),
        ("Qwen/Qwen2.5-0.5B", qwen),
    ]:
        make(site / repo / "resolve" / "main")
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(
        ASSETS / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    diffugpt = site / "diffusionfamily" / "diffugpt-s" / "resolve" / "main"
    shutil.copytree(site / "gpt2" / "resolve" / "main", diffugpt)
    from safetensors.torch import load_file, save_file

    state = load_file(diffugpt / "model.safetensors")
    wrapped = {
        (
            "embed_tokens.weight"
            if k == "transformer.wte.weight"
            else "denoise_model." + k.removeprefix("transformer.")
        ): v
        for k, v in state.items()
    }
    save_file(wrapped, diffugpt / "model.safetensors")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "DIFFU_CACHE": str(tmp_path / "cache"),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    yield tmp_path, env
    server.shutdown()


@pytest.mark.slow
def test_every_readme_command_runs(sandbox):
    tmp_path, env = sandbox
    ran = 0
    for cmd in readme_commands():
        if cmd.startswith("pip install"):
            assert all((ROOT / f).is_file() for f in re.findall(r"-r (\S+)", cmd))
            if "&&" not in cmd:
                assert "lm-eval" in (ROOT / "requirements-dev.txt").read_text()  # installed with the tests
                continue
            cmd = cmd.split("&&", 1)[1].strip()
        if cmd.startswith("curl "):  # the sandbox holds the files; the URL is the one lab/miniature.py fetches
            from lab.miniature import STORIES_URL

            url = cmd.split()[-1]
            assert url.startswith(STORIES_URL) and (tmp_path / url.rsplit("/", 1)[1]).is_file()
            continue
        if cmd == "python -m pytest -q":
            continue  # that is this suite
        if cmd == "python lab/bench.py --suite tiny":
            continue  # tests/test_bench.py runs exactly this
        tiny = tiny_command(cmd)
        proc = subprocess.run(tiny, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (
            f"README command failed: {cmd}\nran: {tiny}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
        ran += 1
    assert ran >= 20


FILE_KINDS = (".model", ".safetensors", ".json", ".jsonl", ".pt", ".png", ".bin", ".txt", ".gguf", ".md")
MODULES = ("model", "train", "sample", "convert", "checkpoint", "tokenizer", "formats", "support", "data", "lab")


def named_in_readmes():
    """The spans in backticks of README.md and lab/README.md, with where each is."""
    for readme in ("README.md", "lab/README.md"):
        for span in re.findall(r"`([^`\n]+)`", (ROOT / readme).read_text()):
            yield readme, span


def test_every_name_the_readmes_give_exists():
    """Every option, file, function and class the READMEs name in backticks is in the code: a rename or a move
    that forgets the README fails here."""
    import importlib

    sources = [p for d in ("", "data/", "lab/", "formats/", "support/") for p in ROOT.glob(f"{d}*.py")]
    code = "\n".join(p.read_text() for p in sources)
    words = set(re.findall(r"[A-Za-z_]\w*", code))
    missing = []
    for readme, span in named_in_readmes():
        if span.startswith("--"):  # an option of one of the scripts
            flag = re.match(r"--[a-z0-9-]+", span)[0]
            if f'"{flag}"' not in code and f"'{flag}'" not in code and flag != "--help":
                missing.append((readme, span))
        elif re.fullmatch(r"(\w+/)+\w+\.py|\w+\.py", span):  # a file of the project
            if not (ROOT / span).is_file() and not list(ROOT.glob(f"*/{span}")):
                missing.append((readme, span))
        elif (
            re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", span)
            and span.split(".")[0] in MODULES
            and "." + span.split(".")[-1] not in FILE_KINDS
        ):
            parts = span.split(".")  # module.name: imported, and each attribute looked up
            for n in range(len(parts) - 1, 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:n]))
                except ImportError:
                    continue
                for attr in parts[n:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append((readme, span))
                break
            else:
                missing.append((readme, span))
        elif re.fullmatch(r"[a-z_]+_[a-z_]+|[A-Z][a-z]+[A-Z]\w*", span):  # a function's or a class's name
            if span not in words:
                missing.append((readme, span))
    assert not missing, "\n".join(f"{readme}: `{span}`" for readme, span in missing)


def test_the_readme_gives_the_files_sizes_as_they_are():
    """The front page's line counts of the six reference files are within 10% of the files'."""
    text = (ROOT / "README.md").read_text()
    said = {f: int(n) for f, n in re.findall(r"\| `(\w+\.py)` \| (\d+) \|", text)}
    said |= {f: int(n) for f, n in re.findall(r"`(\w+\.py)` \((\d+)[ :]", text)}
    assert set(said) == {"model.py", "train.py", "sample.py", "convert.py", "checkpoint.py", "tokenizer.py"}
    for name, n in said.items():
        lines = len((ROOT / name).read_text().splitlines())
        assert abs(lines - n) <= 0.1 * lines, (name, n, lines)
