"""bench.py runs and reports ratios (speed targets live in the benchmark, never in timed tests)."""

import json

from conftest import run


def test_bench_tiny_suite(tmp_path):
    proc = run("bench.py", "--suite", "tiny", "--json", tmp_path / "rows.json")  # the README's command, plus --json
    assert "ours/official" in proc.stdout and "/official" in proc.stdout and "matmul peak" in proc.stdout
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    train = {(r["engine"], r["mode"]) for r in rows if r["bench"] == "train"}
    assert train == {("ours", "anneal"), ("ours", "full"), ("ours", "ar"), ("official-style", "anneal"), ("official-style", "full")}
    engines = {r["engine"] for r in rows if r["bench"] == "decode"}
    assert "official-style loop" in engines and "ours AR with KV cache" in engines and len(engines) == 7
    assert all(r["tokens_per_s"] > 0 for r in rows)
