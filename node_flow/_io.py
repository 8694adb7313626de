"""Atomic file writes: one writer shared by sweeps, experiments and benchmarks.

Every results file is written to a temporary file in the same folder, flushed to disk
and moved into place with `os.replace`, so a reader (or a resumed run) never sees a
half-written file, even if the process is killed mid-write.
"""

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, IO

import numpy as np


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO[bytes]], Any]) -> Path:
    """Write `data` (text, bytes, or a function `f ↦ None` writing to a binary file
    object) to `path` atomically; creates the parent folder. The file gets the permissions
    a plain `open(path, "w")` would give it. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); give it the mode `open` would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode())
            elif isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def to_builtin(x: Any) -> Any:
    """JSON-serializable form of NumPy/JAX scalars and arrays (for `json.dumps(default=)`)."""
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as indented, key-sorted JSON, written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=to_builtin))


def atomic_write_csv(path: str | Path, rows: list[dict]) -> Path:
    """A list of dicts as CSV (columns in order of first appearance), written atomically."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    if fields:
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: to_builtin(v) if hasattr(v, "dtype") else v for k, v in row.items()}
            )
    return atomic_write(path, buf.getvalue())


def atomic_savefig(fig, path: str | Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format from the suffix of `path`)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    kwargs = {"dpi": 130, "bbox_inches": "tight", **kwargs}
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
