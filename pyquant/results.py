"""The versioned results schema shared by every command (reference, compare, perplexity, bench)
and read by ``pyquant report``. Bottom layer: imports nothing of pyquant but the version.

A results file is one JSON object:
    {"schema": "pyquant.results", "version": 1, "kind": "compare" | "perplexity" | "bench" | ...,
     "variant": "int4-g128" (a short label for the model variant measured),
     "model": {...} (name/path, fingerprints, quant spec), "created": ISO-8601 UTC,
     "machine": {...} (see machine_facts), "complete": true|false, "data": {...kind-specific...}}
Writes are atomic (temp file + rename): a file is either whole or absent; a run that stops early
writes "complete": false.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import tempfile
from typing import Any

SCHEMA = "pyquant.results"
VERSION = 1


def _jsonable(x: Any) -> Any:
    """Tensors, numpy arrays and numpy scalars -> plain Python; NaN/Inf -> None (strict JSON)."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    return x


def machine_facts() -> dict:
    """CPU model, cores, torch version, GPU name (if any), pyquant backend info."""
    facts = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return facts


def make_results(kind: str, data: dict, *, variant: str = "", model: dict | None = None,
                 complete: bool = True, machine: dict | None = None) -> dict:
    """Build a results object (not yet written)."""
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "kind": kind,
        "variant": variant,
        "model": model or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine if machine is not None else machine_facts(),
        "complete": bool(complete),
        "data": data,
    }


def make_shareable(path: str) -> None:
    """Give a file written through a private temporary (``mkstemp`` and safetensors create mode
    0600) the mode of an ordinary new file, 0666 less the umask: results, stores and quantized
    weights are meant to be read by other users and services."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", suffix: str = ""):
    """``with atomic_file(path) as f:`` writes a temporary file beside ``path`` (missing parent
    directories are created) that replaces ``path`` only once the block has finished, flushed to
    disk, with the mode of an ordinary new file; on any failure the temporary file is removed and
    ``path`` is left as it was."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        make_shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(path: str, results: dict) -> str:
    """Atomically write a results object as JSON; returns the path. On failure (OSError: ``path``
    is a directory, not writable, ...) no temporary file is left behind."""
    with atomic_file(path, suffix=".json") as f:
        json.dump(_jsonable(results), f, indent=1, allow_nan=False)
        f.write("\n")
    return path


def changed_settings(path: str, settings: dict) -> "list[str] | None":
    """The keys whose values differ between the settings saved as JSON at ``path`` and ``settings``
    (compared as read back: tuples become lists); None when nothing is saved there."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        old = json.load(f)
    new = json.loads(json.dumps(settings))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def read_results(path: str) -> dict:
    """Read and check a results file; ValueError if it is not one of ours or of a newer version."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a pyquant results file (schema {obj.get('schema') if isinstance(obj, dict) else None!r})")
    if obj.get("version", 0) > VERSION:
        raise ValueError(f"{path}: results version {obj.get('version')} is newer than this pyquant reads ({VERSION})")
    return obj
