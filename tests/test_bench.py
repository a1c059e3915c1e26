"""`worldsim bench`: runs benchmark scripts as subprocesses and combines their JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worldsim.evaluation.bench import (
    BenchConfig,
    bench,
    default_benchmarks_dir,
    last_json_object,
    parse_options,
)

TYRO_HELP = """usage: x.py [-h] [OPTIONS]
╭─ options ─────────────────────────────────────────────╮
│ -h, --help         show this help message and exit    │
│ --checkpoint PATH  World-model checkpoint bundle.     │
│                    (required)                         │
│ --batches [INT [INT ...]]                             │
│                    Sizes. (default: 1 8 32)           │
│ --bf16, --no-bf16  bf16. (default: False)             │
╰───────────────────────────────────────────────────────╯
"""


def test_parse_options_reads_flags_and_required():
    options = parse_options(TYRO_HELP)
    assert options == {"--help": False, "--checkpoint": True, "--batches": False,
                       "--bf16": False, "--no-bf16": False}


def test_last_json_object_skips_logged_lines():
    out = 'loading...\n{"not": "this"} trailing\nstep 3\n{\n  "a": {"b": 1}\n}\n'
    assert last_json_object(out) == {"a": {"b": 1}}
    assert last_json_object('{"x": 2}') == {"x": 2}
    with pytest.raises(ValueError):
        last_json_object("no json here")


def _script(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


@pytest.fixture
def fake_benchmarks(tmp_path: Path) -> Path:
    """Scripts that behave like benchmarks without costing anything: one that logs before its
    JSON and has a --quick option, one that fails, one that needs a checkpoint."""
    d = tmp_path / "benchmarks"
    d.mkdir()
    _script(d, "fast", """
        import argparse, json
        p = argparse.ArgumentParser()
        p.add_argument("--quick", action="store_true")
        a = p.parse_args()
        print("warming up")
        print(json.dumps({"steps_per_s": 123.0, "quick": a.quick}, indent=2))
        """)
    _script(d, "broken", """
        import sys
        print("about to fail", file=sys.stderr)
        raise SystemExit("broken benchmark: no such device")
        """)
    _script(d, "needs_model", """
        import argparse, json
        p = argparse.ArgumentParser()
        p.add_argument("--checkpoint", required=True)
        print(json.dumps({"checkpoint": p.parse_args().checkpoint}))
        """)
    return d


def test_bench_combines_results_and_reports_failures(fake_benchmarks, tmp_path):
    out = tmp_path / "bench.json"
    result = bench(BenchConfig(out=out, benchmarks_dir=fake_benchmarks), log=lambda s: None)
    assert json.loads(out.read_text()) == result
    entries = result["benchmarks"]
    assert set(entries) == {"fast", "broken", "needs_model"}
    assert entries["fast"]["ok"] and entries["fast"]["result"] == {"steps_per_s": 123.0,
                                                                  "quick": True}
    assert entries["fast"]["args"] == ["--quick"]
    assert not entries["broken"]["ok"] and "no such device" in entries["broken"]["error"]
    assert not entries["needs_model"]["ok"] and "--checkpoint" in entries["needs_model"]["skipped"]
    assert result["machine"]["cpu_count"] >= 1

    # with a checkpoint the script that needs one gets it; --full drops the quick options
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    result = bench(BenchConfig(out=out, benchmarks_dir=fake_benchmarks, checkpoint=bundle,
                               scripts=("needs_model", "fast"), full=True), log=lambda s: None)
    assert result["benchmarks"]["needs_model"]["result"] == {"checkpoint": str(bundle.resolve())}
    assert result["benchmarks"]["fast"]["result"]["quick"] is False

    with pytest.raises(ValueError, match="unknown benchmark"):
        bench(BenchConfig(out=out, benchmarks_dir=fake_benchmarks, scripts=("nope",)))


def test_bench_cli_runs_a_real_quick_benchmark(tmp_path):
    if not (default_benchmarks_dir() / "data_loading.py").exists():
        pytest.skip("benchmarks/data_loading.py is not in this tree")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "worldsim.cli", "bench", "--scripts",
                           "data_loading", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    entry = result["benchmarks"]["data_loading"]
    assert entry["ok"], entry
    assert "--no-npz" in entry["args"]  # the quick options were used
    assert entry["result"]["store"]["windows_per_s"] > 0


def test_bench_writes_paths_as_given(tmp_path):
    """The combined file names the bundle as the user passed it and scripts relative to the
    repository, not by the absolute paths the scripts ran with."""
    from worldsim.evaluation.bench import BenchConfig, as_given

    root = tmp_path / "repo"
    cfg = BenchConfig(checkpoint=Path("runs/bundle"), out=tmp_path / "bench.json")
    bundle = str(Path("runs/bundle").resolve())
    entry = {"script": str(root / "benchmarks" / "vae_speed.py"),
             "args": ["--vae", bundle + "/vae", "--batches", "1"],
             "result": {"config": {"checkpoint": bundle, "frames": 3}, "elsewhere": "/opt/x"}}
    assert as_given(entry, cfg, root) == {
        "script": "benchmarks/vae_speed.py", "args": ["--vae", "runs/bundle/vae", "--batches", "1"],
        "result": {"config": {"checkpoint": "runs/bundle", "frames": 3}, "elsewhere": "/opt/x"}}
