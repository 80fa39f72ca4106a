"""The paths a command writes: checked before any (slow) model load, and a failed write turned
into the one-line error of the CLI contract (see pyquant/cli.py)."""
from __future__ import annotations

import contextlib
import os
import tempfile


def _error(msg: str) -> Exception:
    from ..cli import UsageError

    return UsageError(msg)


def _paths(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else [v for v in value if v is not None]


def model_path(spec):
    """The path a --model value reads, or None for 'demo' (the bundled model, never a local path)."""
    return None if spec == "demo" else spec


def check_output(path, inputs: "dict | None" = None, *, flag: str = "--output", directory: bool = False) -> str:
    """UsageError (exit 2) unless the command can write ``path``; returns ``path``.

    ``path`` is a file to write (``directory=False``: it must not be an existing directory) or a
    directory to write into (``directory=True``: it must not be an existing file). It must not be
    any of ``inputs`` ({flag: path or paths}, the files and directories the command reads): the
    run would overwrite what it reads. The nearest existing ancestor of what is to be created must
    be a directory the command can create files in (tried with a temporary file, which is removed:
    permission bits do not stop root, a read-only or virtual file system does). Missing parent
    directories are not created here; the write creates them."""
    if path is None or not str(path).strip():
        raise _error(f"{flag} is empty: give a path")
    path = str(path)
    p = os.path.abspath(path)
    if directory:
        if os.path.exists(p) and not os.path.isdir(p):
            raise _error(f"{flag} {path} exists and is not a directory")
    elif os.path.isdir(p):
        raise _error(f"{flag} {path} is a directory: give a file name")
    if os.path.exists(p):
        for in_flag, values in (inputs or {}).items():
            for v in _paths(values):
                try:
                    same = os.path.exists(v) and os.path.samefile(v, p)
                except OSError:
                    same = os.path.realpath(v) == os.path.realpath(p)
                if same:
                    what = "directory" if os.path.isdir(p) else "file"
                    raise _error(f"{flag} {path} is the same {what} as {in_flag} {v}: writing it would destroy "
                                 f"the input; choose another {flag}")
    where = p if directory and os.path.isdir(p) else os.path.dirname(p)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise _error(f"{flag} {path}: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise _error(f"{flag} {path}: cannot write in {where} (permission denied)")
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".pyquant-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _error(f"{flag} {path}: cannot write in {where} ({e.strerror or e})") from None
    return path


def add_shard_argument(parser) -> None:
    """--max-shard-size: the largest weights file a command that writes a model directory writes."""
    import argparse

    from ..quant.io import MAX_SHARD_SIZE, parse_size

    def size(text):
        try:
            return parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parser.add_argument("--max-shard-size", type=size, default=MAX_SHARD_SIZE, metavar="SIZE",
                        help=f"largest weights file to write, e.g. 500MB, 5GB, 2GiB (default {MAX_SHARD_SIZE}): past "
                             "it the tensors go to model-00001-of-0000N.safetensors ... with "
                             "model.safetensors.index.json, one shard held in memory at a time")


def written_directory(path: str) -> str:
    """"DIR (X MiB on disk[, N weight shards])": the line a command prints for a model directory it wrote."""
    from ..quant.io import weight_files

    files = [os.path.join(path, f) for f in os.listdir(path)]
    disk = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    shards = len(weight_files(path))
    return f"{path} ({disk / 2**20:.2f} MiB on disk" + (f", {shards} weight shards)" if shards > 1 else ")")


@contextlib.contextmanager
def writing(path, flag: str = "--output"):
    """Turn an OSError raised while writing ``path`` into a one-line UsageError (exit 2)."""
    try:
        yield
    except OSError as e:
        detail = e.strerror or str(e)
        names = [str(f) for f in (e.filename, getattr(e, "filename2", None)) if f]
        if names and os.path.abspath(str(path)) not in map(os.path.abspath, names):
            detail += f" ({names[0]})"
        raise _error(f"cannot write {flag} {path}: {detail}") from None
