"""The on-disk record of a sweep: a manifest that fingerprints it and one file per batch.

```
out/
  sweep.json          the fingerprint: function, grid structure, shapes, a hash of the grid
                      values, batch size, result structure
  batch_00000.npz     the results of configurations [0, B), one array per result leaf
  batch_00001.npz     ...
```

Every file is written to a temporary name in the same folder, flushed, and moved into place
with `os.replace`, so a killed sweep leaves only whole files behind and resumes from them.
"""

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


MANIFEST = "sweep.json"
_FORMAT = 1
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable(text: str) -> str:
    """A repr without memory addresses (`<function f at 0x7f…>` → `<function f>`)."""
    return _ADDRESS.sub("", text)


def function_name(fn: Any) -> str:
    """`module.qualname` of a function, or of the class of a callable object."""
    inner = getattr(fn, "func", fn)  # functools.partial, jax.tree_util.Partial
    if not hasattr(inner, "__qualname__"):
        inner = type(inner)
    return f"{getattr(inner, '__module__', '?')}.{inner.__qualname__}"


def fingerprint(
    fn: Any,
    grid_treedef: Any,
    grid_leaves: list[np.ndarray],
    key_impls: tuple[str | None, ...],
    result_treedef: Any,
    result_leaves: list[Any],
    batch_size: int,
) -> dict:
    """What identifies a sweep: a changed function name, grid (structure, shapes, dtypes or
    values), batch size or result structure makes a different sweep."""
    digest = hashlib.sha256()
    for leaf in grid_leaves:
        digest.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return {
        "format": _FORMAT,
        "fn": function_name(fn),
        "grid_treedef": _stable(str(grid_treedef)),
        "grid_leaves": [
            [str(x.dtype), list(x.shape), impl] for x, impl in zip(grid_leaves, key_impls)
        ],
        "grid_hash": digest.hexdigest(),
        "num_configs": int(grid_leaves[0].shape[0]),
        "batch_size": int(batch_size),
        "result_treedef": _stable(str(result_treedef)),
        "result_leaves": [[str(x.dtype), list(x.shape)] for x in result_leaves],
    }


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class SweepStore:
    """The folder `out` of one sweep: checks the manifest, lists, loads and writes batches."""

    def __init__(self, out: str | os.PathLike, manifest: dict, *, write: bool = True):
        self.dir = Path(out)
        self.manifest = manifest
        self.write = write
        path = self.dir / MANIFEST
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"sweep: {path} is not a readable sweep manifest ({e}).") from e
            self._check(stored)
        else:
            strays = sorted(self.dir.glob("batch_*.npz")) if self.dir.exists() else []
            if strays:
                raise ValueError(
                    f"sweep: `out` = {self.dir} holds batch files ({strays[0].name}, ...) but no "
                    f"{MANIFEST}: it is not the folder of a sweep. Use an empty or new folder."
                )
            if write:
                self.dir.mkdir(parents=True, exist_ok=True)
                text = json.dumps(manifest, indent=2, sort_keys=True).encode()
                _atomic_write(path, lambda f: f.write(text))

    def _check(self, stored: dict) -> None:
        keys = sorted(set(stored) | set(self.manifest))
        diff = [k for k in keys if stored.get(k) != self.manifest.get(k)]
        if diff:
            lines = "; ".join(
                f"{k}: stored {_describe(stored.get(k))}, now {_describe(self.manifest.get(k))}"
                for k in diff
            )
            raise ValueError(
                f"sweep: `out` = {self.dir} holds the results of a different sweep ({lines}). "
                "Use another `out` folder, or delete this one to start over."
            )

    def path(self, index: int) -> Path:
        return self.dir / f"batch_{index:05d}.npz"

    def done(self, num_batches: int) -> list[bool]:
        return [self.path(k).exists() for k in range(num_batches)]

    def load(
        self, index: int, expected: list[tuple[tuple[int, ...], np.dtype]]
    ) -> list[np.ndarray]:
        path = self.path(index)
        with np.load(path, allow_pickle=False) as data:
            leaves = [data[f"leaf_{i:04d}"] for i in range(len(expected))]
        for i, (leaf, (shape, dtype)) in enumerate(zip(leaves, expected)):
            if leaf.shape != shape or leaf.dtype != dtype:
                raise ValueError(
                    f"sweep: {path} does not match its manifest (result leaf {i}: "
                    f"{leaf.dtype}{list(leaf.shape)}, expected {dtype}{list(shape)}). "
                    "Delete the file to recompute this batch."
                )
        return leaves

    def save(self, index: int, leaves: list[np.ndarray]) -> None:
        if self.write:
            arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
            _atomic_write(self.path(index), lambda f: np.savez(f, **arrays))
