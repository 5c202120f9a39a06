"""What the lab's scripts share: running the project's scripts, splitting stories into sentences, timing
self-speculative decoding against AR."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from support.files import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
running = None  # the script that run_script waits for now
stopping = None  # the signal that asked this process to stop


def sentences(text):
    """The sentences of a text (its line breaks read as spaces): each ends at . ! or ? before white space."""
    return re.split(r"(?<=[.!?])\s+", text.replace("\n", " ").strip())


def run_script(name, *positional, budget=None, **options):
    """Run one of the project's scripts as a user would: `python NAME POSITIONAL --OPTION VALUE ...` (True: a bare
    flag) -> its last line of standard output, parsed as JSON when it is. Its progress goes to standard error; a
    failure exits with its code (the script has said why). budget: seconds of wall clock, after which the script
    gets SIGTERM, as from a cluster's scheduler (train.py saves and stops: that is not a failure)."""
    global running
    flags = [str(x) for k, v in options.items() for x in [f"--{k.replace('_', '-')}"] + ([] if v is True else [v])]
    command = [sys.executable, str(ROOT / name), *map(str, positional), *flags]
    parent = os.getpid()
    # its own process group (a Ctrl-C reaches it once, from stop()), and it stops if this process is killed
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=lambda: die_with_parent(parent)
    ) as running:
        try:
            out, _ = running.communicate(timeout=budget)
            spent = False
        except subprocess.TimeoutExpired:
            running.send_signal(signal.SIGTERM)
            out, _ = running.communicate()
            spent = True
    code, running = running.returncode, None
    if stopping:
        sys.exit(128 + stopping)
    if code and not (spent and code == 128 + signal.SIGTERM):
        sys.exit(128 - code if code < 0 else code)  # killed by a signal: the shell's 128 + the signal
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        return json.loads(last)
    except ValueError:
        return last


def stop_children_on_signals():
    """SIGTERM / SIGINT: pass the signal on to the running script (train.py saves and stops), wait for it,
    then exit with 128 + the signal; between scripts, exit at once."""

    def stop(signum, frame):
        global stopping
        stopping = signum
        if running is None:
            sys.exit(128 + signum)
        running.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def story_prompts(base, stories, n=8, tokens=16):
    """The first `tokens` tokens of n held-out stories: the prompts of the speed rows."""
    from checkpoint import read_meta
    from tokenizer import load_tokenizer

    tok = load_tokenizer(base, read_meta(base))
    return [tok.encode(story, bos=True)[:tokens] for story in stories[:n]]


def speculation(ckpt, verifier, prompts, length):
    """Greedy self-speculative decoding against AR greedy (the checkpoint's AR mode, or the verifier's), side by
    side: each prompt alone, then all in one batch -> per batch size: tokens/s of both, tokens per pass, the
    mean of the accepted draft tokens, and whether the output equals AR's (it must)."""
    import time

    from checkpoint import load_checkpoint
    from sample import Sampling, Trained, generate_ar

    drafter, meta = load_checkpoint(ckpt)
    model, ar_meta = load_checkpoint(verifier) if verifier else (drafter, meta)
    drafting, trained, greedy = Trained.of(meta), Trained.of(ar_meta), Sampling(greedy=True)
    generate_ar(model, prompts[:1], 4, trained, seeds=[0], sampling=greedy, drafter=(drafter, drafting))  # warm-up
    result = {}
    for batch in (1, len(prompts)):
        times, tokens, passes, accepted, same = [0.0, 0.0], 0, 0, [], True
        for first in range(0, len(prompts), batch):
            rows = prompts[first : first + batch]
            outs = []
            for k, how in enumerate([None, (drafter, drafting)]):
                t0 = time.perf_counter()
                out, n, acc = generate_ar(
                    model, rows, length, trained, seeds=[0] * len(rows), sampling=greedy, drafter=how
                )
                times[k] += time.perf_counter() - t0
                outs.append(out)
            tokens, passes, accepted, same = (
                tokens + length * len(rows),
                passes + n * len(rows),
                accepted + acc,
                same and outs[0] == outs[1],
            )
        result[f"b{batch}"] = {
            "ar_tokens_per_s": tokens / times[0],
            "tokens_per_s": tokens / times[1],
            "tokens_per_pass": tokens / passes,
            "accepted": sum(accepted) / max(1, len(accepted)),
            "lossless": same,
        }
    return result


def read_as(ckpt, path, objective):
    """A copy of a checkpoint that reads as another objective: an AR model as diffusion (full attention, masks),
    a block model as AR (its AR mode, causal)."""
    shutil.copytree(ckpt, path)
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "objective": objective}, indent=2))
