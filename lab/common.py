"""What the lab's scripts share: running the project's scripts, splitting stories into sentences."""

import json
import os
import re
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
