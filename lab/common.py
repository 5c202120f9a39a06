"""What the lab's scripts share: running the project's scripts, splitting stories into sentences."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sentences(text):
    """The sentences of a text (its line breaks read as spaces): each ends at . ! or ? before white space."""
    return re.split(r"(?<=[.!?])\s+", text.replace("\n", " ").strip())


def run_script(name, *positional, **options):
    """Run one of the project's scripts as a user would: `python NAME POSITIONAL --OPTION VALUE ...` (True: a bare
    flag) -> its last line of standard output, parsed as JSON when it is. Its progress goes to standard error; a
    failure exits with its code (the script has said why)."""
    flags = [str(x) for k, v in options.items() for x in [f"--{k.replace('_', '-')}"] + ([] if v is True else [v])]
    out = subprocess.run(
        [sys.executable, str(ROOT / name), *map(str, positional), *flags], stdout=subprocess.PIPE, text=True
    )
    if out.returncode:
        sys.exit(out.returncode)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    try:
        return json.loads(last)
    except ValueError:
        return last
