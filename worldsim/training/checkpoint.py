"""Checkpoint directories: `config.json` plus one `.safetensors` file per group of tensors.

    DIR/config.json            every setting (JSON), plus a "checkpoint" entry written here:
                               format, version, and per tensor file its key count and SHA-256
    DIR/<group>.safetensors    one flat {name: tensor} dict per group ("model", "ema",
                               "optimizer", ...); non-tensor parts belong in config.json
    DIR/<sub>/...              a checkpoint may hold sub-checkpoints (a model bundle:
                               vae/, dynamics/, ...), each itself written by `save_checkpoint`

No pickle anywhere: a checkpoint from someone else can be loaded without running their code.

API:
    save_checkpoint(dir, config, tensors)        atomic: written into a temporary sibling
                                                 directory, then renamed over `dir`
    load_checkpoint(dir, device="cpu")           -> (config, tensors); checks every file's
                                                 SHA-256 and that exactly the listed files exist
    load_state_dict_strict(module, state, what)  every key present, no extra key, same shapes;
                                                 the error names each mismatch and `what`
    dataclass_from_dict(cls, data, what)         rebuild a typed config; unknown, missing or
                                                 mistyped fields raise, naming the field
    flatten_optimizer_state / unflatten_optimizer_state
                                                 an optimizer's state_dict as {name: tensor}
                                                 plus a JSON-serialisable remainder
    tensors_fingerprint(tensors), dataset_fingerprint(store), versions()
    atomic_directory(dir)                        context manager for writing any directory
                                                 (e.g. a bundle of several checkpoints)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import types
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT = "worldsim-checkpoint"
FORMAT_VERSION = 1
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class CheckpointError(ValueError):
    """A checkpoint that does not match what loads it (missing or unexpected key, wrong
    shape, wrong config) or is damaged. The message names the file and the mismatch."""


# ---------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `directory`; on normal exit rename it to
    `directory` (replacing an existing one), on an exception delete it.

    Readers never see a half-written directory: before the rename they see the old one (or
    none), after it the new one. Replacing is two renames (old aside, new in), so a crash
    exactly between them leaves the old copy under a `.old-*` name rather than in place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{uuid.uuid4().hex[:8]}-{directory.name}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if directory.exists():
            old = directory.parent / f".old-{uuid.uuid4().hex[:8]}-{directory.name}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recorded_path(path: str | os.PathLike) -> str:
    """A path as a config records where its inputs came from: relative to the working
    directory when it lies inside it (so a model shipped from a checkout names no machine's
    directories), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing memory (safetensors refuses aliasing)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        out[name] = t
    return out


def save_checkpoint(directory: str | os.PathLike, config: dict[str, Any],
                    tensors: dict[str, dict[str, torch.Tensor]],
                    subdirectories: dict[str, str | os.PathLike] | None = None) -> Path:
    """Write `config` to DIR/config.json and each group of `tensors` to DIR/<group>.safetensors,
    atomically. `subdirectories` ({name: existing checkpoint dir}) are copied in as DIR/<name>
    (how a bundle of several checkpoints is assembled). Returns the directory."""
    directory = Path(directory)
    files = {}
    with atomic_directory(directory) as tmp:
        for group, state in tensors.items():
            if not _GROUP_NAME.match(group):
                raise ValueError(f"tensor group name {group!r} is not a valid file stem")
            path = tmp / f"{group}.safetensors"
            save_file(_storable(state), str(path))
            files[group] = {"file": path.name, "tensors": len(state),
                            "sha256": _sha256_file(path)}
        for name, source in (subdirectories or {}).items():
            shutil.copytree(source, tmp / name)
        meta = {**config, "checkpoint": {"format": FORMAT, "version": FORMAT_VERSION,
                                         "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "files": files}}
        with open(tmp / "config.json", "w") as f:
            json.dump(meta, f, indent=2, default=json_default)
            f.flush()
            os.fsync(f.fileno())
    return directory


def json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------- reading
def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """DIR/config.json without loading any tensor (the "checkpoint" entry included)."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{directory} is not a checkpoint: {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    meta = config.get("checkpoint") if isinstance(config, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} config (no 'checkpoint' entry)")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')}, "
                              f"this code reads version {FORMAT_VERSION}")
    return config


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu",
                    groups: list[str] | None = None
                    ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read a checkpoint written by `save_checkpoint`: (config without its "checkpoint"
    entry, {group: {name: tensor}}). `groups` loads only those groups (all by default).
    Every listed file must exist and match its SHA-256; a `.safetensors` file that the config
    does not list is an error too."""
    directory = Path(directory)
    config = read_config(directory)
    files = config.pop("checkpoint")["files"]
    listed = {spec["file"] for spec in files.values()}
    extra = sorted(p.name for p in directory.glob("*.safetensors") if p.name not in listed)
    if extra:
        raise CheckpointError(f"{directory} holds tensor files its config.json does not list: "
                              f"{', '.join(extra)}")
    if groups is not None:
        missing = sorted(set(groups) - set(files))
        if missing:
            raise CheckpointError(f"{directory} has no tensor group(s) {', '.join(missing)} "
                                  f"(it has: {', '.join(sorted(files)) or 'none'})")
    tensors = {}
    for group, spec in files.items():
        if groups is not None and group not in groups:
            continue
        path = directory / spec["file"]
        if not path.exists():
            raise CheckpointError(f"{path} is missing (listed in {directory}/config.json)")
        if _sha256_file(path) != spec["sha256"]:
            raise CheckpointError(f"{path} does not match the SHA-256 in config.json "
                                  "(damaged or replaced)")
        tensors[group] = load_file(str(path), device=str(device))
    return config, tensors


def state_dict_mismatches(expected: dict[str, torch.Tensor],
                          found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two {name: tensor} dicts (keys and shapes)."""
    problems = [f"missing key {k!r}" for k in expected if k not in found]
    problems += [f"unexpected key {k!r}" for k in found if k not in expected]
    problems += [f"shape mismatch for {k!r}: checkpoint {tuple(found[k].shape)}, "
                 f"model {tuple(v.shape)}"
                 for k, v in expected.items() if k in found and found[k].shape != v.shape]
    return problems


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor],
                           what: str) -> None:
    """Load `state` into `module`; any missing/unexpected key or shape difference raises a
    CheckpointError listing all of them, prefixed with `what` (e.g. "DIR/ema.safetensors")."""
    problems = state_dict_mismatches(module.state_dict(), state)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20
                                 else [])
        raise CheckpointError(f"{what} does not fit {type(module).__name__}: "
                              + "; ".join(shown))
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------- typed configs
def dataclass_from_dict(cls: type, data: Any, what: str) -> Any:
    """Build dataclass `cls` from the dict `asdict` produced, strictly: unknown and missing
    fields raise a CheckpointError naming them (and `what`, e.g. "vae config in DIR");
    nested dataclasses, tuples and Paths are rebuilt from their JSON form. Fields in the
    class's `ADDED_LATER` ({name: value}, settings introduced after configs were first
    written) take that value when missing, so older checkpoints load as they were trained."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: expected an object for {cls.__name__}, got {data!r}")
    data = {**getattr(cls, "ADDED_LATER", {}), **data}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    missing = sorted(set(fields) - set(data))
    if unknown or missing:
        parts = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing field(s) {', '.join(missing)}"] if missing else [])
        raise CheckpointError(f"{what}: {cls.__name__} " + "; ".join(parts))
    return cls(**{name: _convert(hints[name], data[name], f"{what}: {cls.__name__}.{name}")
                  for name in fields})


def _convert(tp: Any, value: Any, what: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value, what)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, what)
            except CheckpointError as e:
                errors.append(str(e))
        raise CheckpointError(errors[0] if errors else f"{what}: {value!r} fits no option")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise CheckpointError(f"{what}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CheckpointError(f"{what}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_convert(item, v, what) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is Any:
        return value
    if tp is Path:
        return Path(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is not tp:
        raise CheckpointError(f"{what}: expected {tp.__name__}, got {value!r}")
    return value


# ---------------------------------------------------------------------- optimizer state
def flatten_optimizer_state(state_dict: dict[str, Any]
                            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch.optim state_dict -> ({"state.<param>.<key>": tensor}, JSON remainder).
    The remainder keeps param_groups and any non-tensor per-parameter entries."""
    tensors, scalars = {}, {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor],
                              remainder: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in remainder.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": remainder["param_groups"]}


# ---------------------------------------------------------------------- fingerprints
def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over names, dtypes, shapes and bytes, in sorted key order: the same
    weights give the same fingerprint wherever and however they are stored."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(store, names: list[str] | None = None) -> str:
    """SHA-256 (first 16 hex) of a dataset's identity: env id, and for each episode (sorted)
    its name, length and the CRC-32 of every file. Cheap (reads only meta.json data)."""
    names = sorted(store.names if names is None else names)
    desc = [store.env_id] + [
        [n, store.length(n), sorted((stem, spec["crc32"]) for stem, spec in
                                    store.episode_meta(n)["files"].items())] for n in names]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
    import platform

    import numpy
    import safetensors

    from worldsim import __version__
    return {"worldsim": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}
