"""The on-disk record of a sweep: a manifest that fingerprints it and one file per batch.

```
out/
  sweep.json          the fingerprint: a hash of the traced computation of `fn` and of its
                      constants, the grid's structure, shapes and a hash of its values, the
                      batch size and the result structure
  batch_00000.npz     the results of configurations [0, B), one array per result leaf
                      (result codes such as `FlowSolution.result` included)
  batch_00001.npz     ...
```

Every file is written with [`node_flow._io.atomic_write`][] (a temporary file in the same
folder moved into place with `os.replace`), so a killed sweep leaves only whole files behind
and resumes from them.
"""

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._io import atomic_write, atomic_write_json


MANIFEST = "sweep.json"
_FORMAT = 2
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Informational entries of the manifest: shown in messages, never compared (renaming a
# function does not change its results).
_INFO = frozenset({"fn"})


def _stable(text: str) -> str:
    """A repr without memory addresses (`<function f at 0x7f…>` → `<function f>`)."""
    return _ADDRESS.sub("", text)


def function_name(fn: Any) -> str:
    """`module.qualname` of a function, or of the class of a callable object."""
    inner = getattr(fn, "func", fn)  # functools.partial, jax.tree_util.Partial
    if not hasattr(inner, "__qualname__"):
        inner = type(inner)
    return f"{getattr(inner, '__module__', '?')}.{inner.__qualname__}"


def _update_with_array(digest, x: Any) -> None:
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        digest.update(str(jax.random.key_impl(x)).encode())
        x = jax.random.key_data(x)
    x = np.asarray(x)
    digest.update(f"{x.dtype.str}{x.shape}".encode())
    digest.update(np.ascontiguousarray(x).tobytes())


def computation_hash(closed_jaxpr: jax.extend.core.ClosedJaxpr) -> str:
    r"""SHA-256 of what determines the results of a traced function: the text of its jaxpr
    (every primitive, shape, dtype and inlined literal, memory addresses removed) and the
    values of its constants (closed-over arrays, `eqx.Module` fields, `Partial` arguments).

    Two functions with the same name but another body, closures over other values or
    partial applications with other arguments hash differently; the same computation
    traced in another process hashes the same. Python callbacks inside the function
    (`jax.debug.callback`, `pure_callback`) are opaque: only their name enters.
    """
    digest = hashlib.sha256(_stable(str(closed_jaxpr.jaxpr)).encode())
    for const in closed_jaxpr.consts:
        _update_with_array(digest, const)
    return digest.hexdigest()


def fingerprint(
    fn: Any,
    closed_jaxpr: jax.extend.core.ClosedJaxpr,
    grid_treedef: Any,
    grid_leaves: list[np.ndarray],
    key_impls: tuple[str | None, ...],
    result_treedef: Any,
    result_leaves: list[Any],
    batch_size: int,
) -> dict:
    """What identifies a sweep: a changed computation (the traced `fn` or its constants),
    grid (structure, shapes, dtypes or values), batch size or result structure makes a
    different sweep. The function's name is recorded but not compared."""
    digest = hashlib.sha256()
    for leaf in grid_leaves:
        _update_with_array(digest, leaf)
    return {
        "format": _FORMAT,
        "fn": function_name(fn),
        "computation": computation_hash(closed_jaxpr),
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
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(
                    f"sweep: {path} is not a readable sweep manifest ({e}). Delete the folder "
                    "to start over, or use another `out` folder."
                ) from e
            self._check(stored)
        else:
            strays = sorted(self.dir.glob("batch_*.npz")) if self.dir.exists() else []
            if strays:
                raise ValueError(
                    f"sweep: `out` = {self.dir} holds batch files ({strays[0].name}, ...) but no "
                    f"{MANIFEST}: it is not the folder of a sweep. Use an empty or new folder."
                )
            if write:
                atomic_write_json(path, manifest)

    def _check(self, stored: Any) -> None:
        if not isinstance(stored, dict):
            stored = {}
        keys = sorted((set(stored) | set(self.manifest)) - _INFO)
        diff = [k for k in keys if stored.get(k) != self.manifest.get(k)]
        if diff:
            lines = "; ".join(
                f"{k}: stored {_describe(stored.get(k))}, now {_describe(self.manifest.get(k))}"
                for k in diff
            )
            why = ""
            if "computation" in diff:
                why = (
                    f" The function computes something else (stored: {stored.get('fn')}, now: "
                    f"{self.manifest['fn']}; its traced operations or constants differ)."
                )
            raise ValueError(
                f"sweep: `out` = {self.dir} holds the results of a different sweep ({lines}).{why} "
                "Use another `out` folder, or delete this one to start over."
            )

    def path(self, index: int) -> Path:
        return self.dir / f"batch_{index:05d}.npz"

    def done(self, num_batches: int) -> list[bool]:
        return [self.path(k).exists() for k in range(num_batches)]

    def load(
        self, index: int, expected: list[tuple[tuple[int, ...], np.dtype]]
    ) -> list[np.ndarray]:
        """The result leaves of batch `index`; a damaged file is a `ValueError` naming it."""
        path = self.path(index)
        fix = (
            f"Delete {path} to recompute this batch (the other batches are kept), or delete "
            f"the folder {self.dir} to start the sweep over."
        )
        try:
            # Our own file object: numpy leaves its own open when the archive is damaged.
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
                leaves = [data[f"leaf_{i:04d}"] for i in range(len(expected))]
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"sweep: the batch file {path} is damaged or not a batch of this sweep "
                f"({type(e).__name__}: {e}). {fix}"
            ) from e
        for i, (leaf, (shape, dtype)) in enumerate(zip(leaves, expected)):
            if leaf.shape != shape or leaf.dtype != dtype:
                raise ValueError(
                    f"sweep: {path} does not match its manifest (result leaf {i}: "
                    f"{leaf.dtype}{list(leaf.shape)}, expected {dtype}{list(shape)}). {fix}"
                )
        return leaves

    def save(self, index: int, leaves: list[np.ndarray]) -> None:
        if self.write:
            arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
            atomic_write(self.path(index), lambda f: np.savez(f, **arrays))
