"""`worldsim bench`: run the benchmark scripts under benchmarks/ and write one JSON file.

    worldsim bench                                   # every script, quick settings
    worldsim bench --checkpoint BUNDLE --out bench.json
    worldsim bench --scripts dit_step vae_speed --full

Each script prints one JSON object; each runs as its own subprocess (so one that crashes or
hangs costs only its own entry) with quick options by default (`--full`: the scripts' own
defaults, which take many minutes; a script not listed in QUICK_ARGS gets `--quick` if it
offers one). With --checkpoint, scripts that take a world model get it
(`--checkpoint BUNDLE`, or `--vae BUNDLE/vae` for the VAE benchmark); scripts that require
one are skipped without it. The combined file holds, per script, the command, its wall time,
and its JSON result or the tail of its error output.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Quick options per script: small enough that every script finishes in about a minute on
# the 2-core reference machine, large enough that the figures mean something. Options a
# script does not (or no longer) offer are dropped with a note rather than failing it.
QUICK_ARGS: dict[str, list[str]] = {
    "data_loading": ["--source", "random", "--frames", "2000", "--episode-length", "200",
                     "--seconds", "0.5", "--no-npz"],
    "dit_step": ["--presets", "S", "--windows", "8", "--train-iters", "1", "--step-iters", "2",
                 "--step-batches", "1", "--long-steps", "50"],
    "play_fps": ["--frames", "60", "--warmup", "5", "--rounds", "1"],
    "vae_speed": ["--batches", "1", "16", "--threads", "1", "--repeats", "5", "--warmup", "1"],
    "env_speed": ["--batches", "1", "8", "--budget-s", "1", "--long-steps", "30",
                  "--precisions", "fp32"],
    "imagination_speed": ["--batches", "8", "--obs-modes", "latent", "--repeats", "1"],
}

# Lines kept of a failing script's error output.
ERROR_TAIL_LINES = 30


@dataclass
class BenchConfig:
    """Run the benchmark scripts and combine their JSON results into one file."""

    checkpoint: Path | None = None
    """A world-model bundle for the scripts that measure one (others use random weights)."""
    out: Path = Path("bench.json")
    """The combined JSON file (written atomically)."""
    scripts: tuple[str, ...] = ()
    """Scripts to run, by name without .py (default: every script in the directory)."""
    full: bool = False
    """Run the scripts with their own default settings instead of the quick options."""
    benchmarks_dir: Path | None = None
    """Directory of the benchmark scripts (default: benchmarks/ of this source tree)."""
    timeout_s: float = 3600.0
    """Time limit per script; a script that exceeds it is stopped and reported failed."""


def default_benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks"


def discover(directory: Path) -> dict[str, Path]:
    """{name: path} of the benchmark scripts (every `*.py` not starting with '_')."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no benchmarks directory at {directory}; pass --benchmarks-dir")
    return {p.stem: p for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")}


def parse_options(help_text: str) -> dict[str, bool]:
    """{--flag: required} of the options a script's `--help` lists. Required options are
    those tyro marks "(required)" and those argparse's usage line shows outside brackets."""
    options: dict[str, bool] = {}
    current: list[str] = []
    for raw in help_text.splitlines():
        line = raw.strip(" │╭╮╰╯─\t")
        match = re.match(r"(?:-\w,\s*)?(--[A-Za-z0-9][\w-]*)", line)
        if match:
            current = [match.group(1)]
            # "--flag, --no-flag" forms list both spellings
            current += re.findall(r",\s*(--[A-Za-z0-9][\w-]*)", line[match.end():])
            for flag in current:
                options.setdefault(flag, False)
        if current and "(required)" in line:
            for flag in current:
                options[flag] = True
    # argparse's usage: the "usage:" line and its indented continuation lines
    usage = re.search(r"usage:(.*(?:\n[ \t]+\S.*)*)", help_text)
    if usage:
        text, previous = usage.group(1), None
        while text != previous:  # drop [optional] groups, innermost first
            previous, text = text, re.sub(r"\[[^\[\]]*\]", "", text)
        for flag in re.findall(r"(--[A-Za-z0-9][\w-]*)", text):
            options[flag] = True
    return options


def last_json_object(text: str) -> Any:
    """The JSON document a script printed: all of stdout, or else the last object that starts
    at the beginning of a line and runs to the end (scripts may log lines before it)."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    starts = [m.start() for m in re.finditer(r"(?m)^\{", text)]
    for start in reversed(starts):
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object in the script's output")


def plan(name: str, script: Path, cfg: BenchConfig) -> tuple[list[str], list[str], str | None]:
    """The arguments for one script, notes about them, and a reason to skip it (or None)."""
    help_run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                              text=True, timeout=300, cwd=script.parent.parent,
                              env=_env())
    options = parse_options(help_run.stdout + help_run.stderr)
    args: list[str] = []
    notes: list[str] = []
    if not cfg.full:
        quick = QUICK_ARGS.get(name)
        if quick is None and "--quick" in options:
            args.append("--quick")
        elif quick is None:
            notes.append("no quick options known: run with its defaults")
        else:
            i = 0
            while i < len(quick):
                j = i + 1
                while j < len(quick) and not quick[j].startswith("--"):
                    j += 1
                if quick[i] in options:
                    args += quick[i:j]
                else:
                    notes.append(f"{quick[i]} is not an option of {name} any more: dropped")
                i = j
    if cfg.checkpoint is not None:
        bundle = Path(cfg.checkpoint).resolve()
        if "--checkpoint" in options:
            args += ["--checkpoint", str(bundle)]
        elif "--vae" in options:
            args += ["--vae", str(bundle / "vae")]
    required = [flag for flag, req in options.items() if req and flag not in args]
    if required:
        return args, notes, f"needs {', '.join(required)} (pass --checkpoint to worldsim bench)"
    return args, notes, None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # headless: benchmarks that open a pygame window get SDL's dummy driver
    env.setdefault("SDL_VIDEODRIVER", "dummy")
    env.setdefault("SDL_AUDIODRIVER", "dummy")
    return env


def as_given(obj: Any, cfg: BenchConfig, root: Path) -> Any:
    """`obj` (a JSON value) with the absolute paths the scripts ran with written as the user
    gave them: the bundle as passed to --checkpoint, scripts relative to the repository. The
    combined file is shared, and this machine's layout is not part of its results."""
    # (absolute prefix, what it becomes), the bundle first: it may lie inside the repository
    prefixes = [(str(root) + os.sep, "")]
    if cfg.checkpoint is not None:
        prefixes.insert(0, (str(Path(cfg.checkpoint).resolve()), str(cfg.checkpoint)))

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, str):
            for prefix, given in prefixes:
                if value.startswith(prefix):
                    rest = value[len(prefix):]
                    if not given or not rest or rest.startswith(os.sep):
                        return given + rest
        return value

    return rewrite(obj)


def run_script(name: str, script: Path, cfg: BenchConfig, log=print) -> dict[str, Any]:
    """Run one benchmark script and return its entry of the combined file (paths in it as
    the user gave them, `as_given`)."""
    return as_given(_run_script(name, script, cfg, log), cfg, script.resolve().parent.parent)


def _run_script(name: str, script: Path, cfg: BenchConfig, log) -> dict[str, Any]:
    args, notes, skip = plan(name, script, cfg)
    entry: dict[str, Any] = {"script": str(script), "args": args, "notes": notes}
    if skip:
        log(f"[bench] {name}: skipped ({skip})")
        return {**entry, "ok": False, "skipped": skip}
    log(f"[bench] {name} {' '.join(args)}")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                              text=True, timeout=cfg.timeout_s, cwd=script.parent.parent,
                              env=_env())
    except subprocess.TimeoutExpired:
        entry.update(ok=False, seconds=time.perf_counter() - start,
                     error=f"timed out after {cfg.timeout_s:.0f} s")
        log(f"[bench] {name}: timed out")
        return entry
    entry["seconds"] = time.perf_counter() - start
    entry["returncode"] = proc.returncode
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-ERROR_TAIL_LINES:])
        entry.update(ok=False, error=tail or f"exit code {proc.returncode}")
        log(f"[bench] {name}: failed (exit code {proc.returncode}) after "
            f"{entry['seconds']:.1f} s\n{tail}")
        return entry
    try:
        entry["result"] = last_json_object(proc.stdout)
    except ValueError as e:
        entry.update(ok=False, error=f"{e}; stdout ended with: {proc.stdout.strip()[-500:]!r}")
        log(f"[bench] {name}: {entry['error']}")
        return entry
    entry["ok"] = True
    log(f"[bench] {name}: done in {entry['seconds']:.1f} s")
    return entry


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda=torch.cuda.is_available())
    except ImportError:
        pass
    return info


def bench(cfg: BenchConfig, log=print) -> dict[str, Any]:
    """Run the selected scripts; returns the combined result (also written to cfg.out)."""
    from worldsim import __version__
    from worldsim.data.store import write_json_atomic

    directory = Path(cfg.benchmarks_dir or default_benchmarks_dir())
    found = discover(directory)
    names = list(cfg.scripts) or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; {directory} has {sorted(found)}")
    if cfg.checkpoint is not None and not (Path(cfg.checkpoint) / "config.json").exists():
        raise FileNotFoundError(f"{cfg.checkpoint} is not a checkpoint bundle "
                                "(no config.json)")
    result: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "mode": "full" if cfg.full else "quick",
        "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None,
        "worldsim": __version__, "machine": machine(), "benchmarks": {}}
    for name in names:
        result["benchmarks"][name] = run_script(name, found[name], cfg, log)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(cfg.out), result)
    ok = [n for n, e in result["benchmarks"].items() if e.get("ok")]
    log(f"[bench] {len(ok)} of {len(names)} benchmarks ran; wrote {cfg.out}")
    return result


def main(argv: list[str] | None = None) -> None:
    import tyro

    cfg = tyro.cli(BenchConfig, args=argv)
    try:
        result = bench(cfg, log=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"worldsim bench: {e}")
    failed = [n for n, e in result["benchmarks"].items() if not e.get("ok")
              and "skipped" not in e]
    if failed:
        sys.exit(f"worldsim bench: failed: {', '.join(failed)} (see {cfg.out})")


if __name__ == "__main__":
    main()
