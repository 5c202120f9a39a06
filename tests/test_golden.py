"""lab/golden.py, the tool that shows a refactor changed no result: it must see a change, and run whole."""

import json

import pytest

from conftest import ASSETS, run
from lab.golden import count, differences


def test_differences_name_each_changed_value():
    old = {"sample/x": [{"text": "a", "tokens": [1, 2]}], "eval/y": {"nll": 1.5}, "gone": 1}
    new = {"sample/x": [{"text": "a", "tokens": [1, 3]}], "eval/y": {"nll": 1.5000001}, "added": 2}
    assert [path for path, _, _ in differences(old, new)] == [
        "/added",
        "/eval/y/nll",
        "/gone",
        "/sample/x[0]/tokens[1]",
    ]
    assert differences(old, json.loads(json.dumps(old))) == [] and count(old) == 5


@pytest.mark.slow
def test_the_golden_run_records_the_whole_pipeline(tmp_path):
    """The whole pipeline runs (about two minutes) and records its values; one token changed is named."""
    proc = run("lab/golden.py", "--assets", ASSETS, "--out", tmp_path / "a", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "a" / "golden.json").read_text())
    assert count(record) > 2900 and record["convert/stories260K/weights"] == "45367814229f0b93"
    assert {key.split("/")[0] for key in record} == {"convert", "prepare", "train", "sample", "eval"}
    changed = json.loads(json.dumps(record))
    changed["sample/ar/greedy"][0]["tokens"][0] += 1
    assert [path for path, _, _ in differences(record, changed)] == ["/sample/ar/greedy[0]/tokens[0]"]
