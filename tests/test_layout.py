"""The layout: imports point only down (no circle, nothing imports lab/), as the README's floors draw them."""

import ast

from conftest import ROOT

FLOORS = {  # module -> floor; a module may import only modules on lower floors
    "model": 0,
    "support.cli": 0,
    "support.rows": 0,
    "support.sampling": 0,
    "support.files": 1,
    "support.flex": 1,
    "support.report": 1,
    "checkpoint": 2,
    "tokenizer": 3,
    "data.corpus": 4,
    "data.download": 4,
    "data.shards": 4,
    "formats.hf": 5,
    "formats.llama2c": 5,
    "formats.gguf": 6,
    "train": 7,
    "sample": 7,
    "convert": 7,
    "data.prepare": 8,
    "lab.common": 8,
    "lab.eval": 9,
    "lab.bench": 9,
    "lab.miniature": 9,
    "lab.smollm2": 9,
    "lab.golden": 9,
    "lab.gpu_check": 9,
}


def our_imports(module):
    """The project's modules that `module` imports, anywhere in its file."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name for name in names if name in FLOORS}


def test_every_python_file_has_a_floor():
    files = {str(p.relative_to(ROOT).with_suffix("")).replace("/", ".") for p in ROOT.glob("*.py")}
    files |= {f"{d}.{p.stem}" for d in ("data", "formats", "lab", "support") for p in (ROOT / d).glob("*.py")}
    assert files == set(FLOORS)


def test_imports_point_only_down():
    upward = [(m, i) for m in FLOORS for i in our_imports(m) if FLOORS[i] >= FLOORS[m]]
    assert not upward, upward
    assert not [(m, i) for m in FLOORS for i in our_imports(m) if i.startswith("lab.") and not m.startswith("lab.")]
