r"""Sweeps: one function over many configurations, batched with `vmap`, sharded over devices.

A sweep evaluates $r_i = f(c_i)$ for configurations $c_1, \dots, c_N$ stacked along a leading
axis. Batches of $B$ configurations are placed on a one-axis device mesh with a
`NamedSharding`; the jit-compiled `vmap(f)` then runs data-parallel, XLA's SPMD partitioner
giving each device its $B/D$ configurations. One compiled function serves every batch;
finished batches can be written to disk (`_sweep_store.py`) and a rerun resumes from them.
Configurations whose result code (e.g. `FlowSolution.result`) says they failed are listed in
`SweepResult.failed`, never passed off as numbers.
"""

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ._solution import RESULTS
from ._sweep_store import fingerprint, SweepStore


_log = logging.getLogger("node_flow.sweep")
_AXIS = "batch"
# The result enumerations recognised in the output of `fn` (an item of any of them is a
# result code: `FlowSolution.result`, `diffrax.Solution.result`, ...).
_ENUMERATIONS = (RESULTS, diffrax.RESULTS, optx.RESULTS, lx.RESULTS)


class SweepResult(eqx.Module):
    r"""The results of a [`node_flow.sweep`][], each next to its configuration.

    **Fields:**

    - `configs`: the grid as passed in (leading axis $N$).
    - `results`: the pytree returned by `fn`, with a leading axis $N$ on every leaf, as NumPy
      arrays on the host (gathered from every device, and from every process under
      `jax.distributed`); row $i$ is `fn` of configuration $i$. Padding is dropped.
    - `sharding`: the `NamedSharding` each batch was computed with (mesh axis `"batch"`).
    - `batch_size`: configurations per batch (a multiple of the number of devices).
    - `computed`, `loaded`: the indices of the batches computed by this call and of those
      read back from `out`.
    - `failed`: `{index: reason}` for every configuration that failed. When the output of
      `fn` holds result codes (a [`node_flow.FlowSolution`][]'s `.result`, or any
      [`node_flow.RESULTS`][], `diffrax.RESULTS`, `optimistix.RESULTS` or
      `lineax.RESULTS`), a configuration fails when one of its codes is neither
      `successful` nor `event_occurred`, and the reason is the code's message. Without
      result codes, a configuration fails when a floating-point result is NaN or infinite.
      The rows of failed configurations in `results` are what `fn` returned (e.g. `inf`
      after the failure time): check `failed` before using them.
    """

    configs: PyTree[Any]
    results: PyTree[Any]
    sharding: NamedSharding = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    computed: tuple[int, ...] = eqx.field(static=True)
    loaded: tuple[int, ...] = eqx.field(static=True)
    failed: dict[int, str] = eqx.field(static=True)

    def __len__(self) -> int:
        return jax.tree.leaves(self.results)[0].shape[0]

    def __getitem__(self, i: int) -> tuple[PyTree[Any], PyTree[Any]]:
        """Configuration `i` and its result."""
        take = lambda x: x[i]
        return jax.tree.map(take, self.configs), jax.tree.map(take, self.results)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_grid(grid) -> tuple[Any, list[np.ndarray], tuple[str | None, ...]]:
    """Flatten and check the grid; PRNG keys travel as their raw data."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(grid)
    if not with_path:
        raise ValueError("sweep: `grid` holds no arrays; pass a pytree of stacked arrays.")
    leaves, impls, sizes = [], [], {}
    for path, leaf in with_path:
        where = jax.tree_util.keystr(path) or "grid"
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(
                "sweep: the grid is being traced (sweep was called inside jit/vmap/grad); "
                "call sweep from Python: it compiles and batches `fn` itself."
            )
        if not isinstance(leaf, (np.ndarray, jax.Array)):
            raise TypeError(
                f"sweep: every leaf of `grid` must be an array whose leading axis indexes the "
                f"configurations; {where} is a {type(leaf).__name__}. Stack the values first, "
                "e.g. `jnp.asarray([...])` or `jax.tree.map(lambda *x: jnp.stack(x), *configs)`."
            )
        if leaf.ndim == 0:
            raise ValueError(
                f"sweep: {where} is a scalar; every leaf of `grid` needs a leading axis of "
                "length N (one entry per configuration)."
            )
        if _is_key(leaf):
            impls.append(str(jax.random.key_impl(leaf)))
            leaf = jax.random.key_data(leaf)
        else:
            impls.append(None)
        leaves.append(np.asarray(leaf))
        sizes[where] = leaf.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            "sweep: the leaves of `grid` disagree on the number of configurations (their "
            f"leading axis): {listing}. Every leaf must have shape (N, ...) for the same N."
        )
    if leaves[0].shape[0] == 0:
        raise ValueError("sweep: `grid` has no configurations (leading axis of length 0).")
    return treedef, leaves, tuple(impls)


def _unflatten_config(treedef, leaves, impls):
    leaves = [
        x if impl is None else jax.random.wrap_key_data(x, impl=impl)
        for x, impl in zip(leaves, impls)
    ]
    return jax.tree.unflatten(treedef, leaves)


# Not `jax.shard_map` (which would let each device run its own loops): equinox's closure
# conversion, used by the root finder of diffrax events, rejects the manual-axis types inside
# it (jax 0.10.2, equinox 0.13.8). A batch-sharded jit of vmap needs no cooperation from `fn`.
@eqx.filter_jit
def _run_batch(fn, leaves, treedef, impls, sharding):
    """`vmap(fn)` over a batch sharded along its leading axis: compiled once per
    (fn, shapes, devices) and reused for every batch."""
    out = jax.vmap(lambda c: _arrays_only(fn(_unflatten_config(treedef, c, impls))))(leaves)
    return jax.tree.map(lambda y: jax.lax.with_sharding_constraint(y, sharding), out)


def _arrays_only(out):
    """`fn`'s output, checked (at trace time) to be a pytree of arrays."""
    not_arrays = jax.tree_util.tree_flatten_with_path(eqx.filter(out, eqx.is_array, inverse=True))[
        0
    ]
    if not_arrays:
        path, leaf = not_arrays[0]
        raise TypeError(
            f"sweep: `fn` must return a pytree of arrays; its output at "
            f"{jax.tree_util.keystr(path)} is a {type(leaf).__name__}."
        )
    return out


def _output_structure(fn, treedef, leaves, impls, size, sharding):
    """The shapes and dtypes of `fn`'s output on one configuration, checked. Read from
    the trace of the batched program, which `_run_batch` then reuses: a sweep traces
    `fn` once (tracing a flow can take longer than compiling it)."""
    batch = [jax.ShapeDtypeStruct((size, *x.shape[1:]), x.dtype, sharding=sharding) for x in leaves]
    batched = jax.eval_shape(lambda b: _run_batch(fn, b, treedef, impls, sharding), batch)
    struct = jax.tree.map(lambda y: jax.ShapeDtypeStruct(y.shape[1:], y.dtype), batched)
    leaves_out = jax.tree_util.tree_flatten_with_path(struct)[0]
    if not leaves_out:
        raise ValueError("sweep: `fn` returns no arrays; return a pytree of arrays.")
    for path, leaf in leaves_out:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError(
                f"sweep: `fn` returns a PRNG key at {jax.tree_util.keystr(path)}; return "
                "`jax.random.key_data(key)` instead."
            )
    return struct


def _jaxpr_of_one(fn, treedef, leaves, impls):
    """The jaxpr of `fn` on the first configuration, for the fingerprint of a sweep that
    writes to `out` (its constants are the closed-over values that determine results)."""
    first = [jnp.asarray(x[0]) for x in leaves]
    return jax.make_jaxpr(lambda c: fn(_unflatten_config(treedef, c, impls)))(first)


def _is_code(x) -> bool:
    return isinstance(x, _ENUMERATIONS)


def _result_codes(struct) -> list[tuple[str, Any, Any, int]]:
    """`(where, enumeration, structure, leaf position)` of every result code in the output."""
    codes, position = [], 0
    for path, slot in jax.tree_util.tree_flatten_with_path(struct, is_leaf=_is_code)[0]:
        if _is_code(slot):
            enum = next(e for e in _ENUMERATIONS if isinstance(slot, e))
            codes.append((jax.tree_util.keystr(path), enum, jax.tree.structure(slot), position))
        position += len(jax.tree.leaves(slot))
    return codes


def _failures(struct, columns: list[np.ndarray]) -> dict[int, str]:
    """`{configuration: reason}` from the result codes in the output, or, without any, from
    non-finite floating-point results."""
    codes = _result_codes(struct)
    reasons: dict[int, list[str]] = {}
    for where, enum, structure, position in codes:
        ok = [enum.successful, getattr(enum, "event_occurred", None)]
        ok = [int(jax.tree.leaves(item)[0]) for item in ok if item is not None]
        column = columns[position].reshape(len(columns[position]), -1)
        for i in np.flatnonzero(~np.all(np.isin(column, ok), axis=1)):
            for code in np.unique(column[i][~np.isin(column[i], ok)]):
                message = enum[jax.tree.unflatten(structure, [np.asarray(code)])]
                reasons.setdefault(int(i), []).append(
                    f"{where}: {message}" if len(codes) > 1 else message
                )
    if not codes:
        nonfinite: dict[int, list[str]] = {}
        for (path, _), column in zip(jax.tree_util.tree_flatten_with_path(struct)[0], columns):
            if jnp.issubdtype(column.dtype, jnp.inexact):
                rows = ~np.all(np.isfinite(column.reshape(len(column), -1)), axis=1)
                for i in np.flatnonzero(rows):
                    nonfinite.setdefault(int(i), []).append(jax.tree_util.keystr(path))
        for i, where in nonfinite.items():
            reasons[i] = [
                f"non-finite result at {', '.join(where) or 'the output'} (`fn` returns no "
                "result code, such as a FlowSolution with throw=False, to say why)"
            ]
    return {i: "; ".join(r) for i, r in sorted(reasons.items())}


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _error_message(error: Exception) -> str:
    """The message of a runtime error without equinox's traceback preamble and advice."""
    text = str(error).strip()
    marker = "EquinoxRuntimeError: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.split("\n\n", 1)[0].strip() or type(error).__name__


def _compute_batch(fn, k, size, leaves, treedef, impls, sharding):
    """Batch `k`: its results on the host (padding dropped) and on the devices (sharded)."""
    num_configs = leaves[0].shape[0]
    start, stop = k * size, min((k + 1) * size, num_configs)
    tic = time.perf_counter()
    rows = [x[start:stop] for x in leaves]
    pad = size - (stop - start)
    if pad:
        rows = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in rows]
    placed = [jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i]) for x in rows]
    try:
        on_devices = _run_batch(fn, placed, treedef, impls, sharding)
        host = [_to_host(y)[: stop - start] for y in jax.tree.leaves(on_devices)]
    except (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError) as e:
        raise RuntimeError(
            f"sweep: batch {k} (configurations {start}-{stop - 1}) raised an error: "
            f"{_error_message(e)} Finished batches are kept in `out` (if given). To record "
            "failures per configuration instead, run the flows inside `fn` with `throw=False` and "
            "return their FlowSolution (or its `.result`): failed configurations are then "
            "listed in `SweepResult.failed`."
        ) from e
    _log.info(
        "sweep: batch %d (configurations %d-%d) in %.2f s",
        k,
        start,
        stop - 1,
        time.perf_counter() - tic,
    )
    return host, on_devices


def _batch_size(batch_size, num_configs, num_devices) -> int:
    whole = math.ceil(num_configs / num_devices) * num_devices
    if batch_size is None:
        return whole
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"sweep: `batch_size` must be a positive integer; got {batch_size!r}.")
    if batch_size % num_devices:
        lower = (batch_size // num_devices) * num_devices
        options = f"{lower} or {lower + num_devices}" if lower else f"{num_devices}"
        raise ValueError(
            f"sweep: `batch_size` = {batch_size} is not a multiple of the {num_devices} devices "
            f"(each device takes an equal share of a batch). Use batch_size = {options}; the "
            "last batch is padded when N is not a multiple of the batch size."
        )
    return min(batch_size, whole)


def sweep(
    fn: Callable[[Any], Any],
    grid: PyTree[Any],
    *,
    devices: Sequence[jax.Device] | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    on_batch: Callable[[int, Any], None] | None = None,
) -> SweepResult:
    r"""Evaluate `fn` on every configuration of `grid`, batched and sharded over devices.

    Computes $r_i = f(c_i)$, $i = 1, \dots, N$, where $c_i$ is `grid` with every leaf indexed
    at $i$ along its leading axis. Configurations are cut into batches of $B$ (the last batch
    is padded with copies of the last configuration, and the padding dropped); each batch is
    placed on a one-axis mesh of the $D$ devices with
    `NamedSharding(Mesh(devices, ("batch",)), PartitionSpec("batch"))` and `jax.vmap(fn)`,
    jit-compiled once for the sweep, runs on it data-parallel: each device computes its $B/D$
    configurations, and the results keep that sharding until they are gathered. An adaptive
    solve inside `fn` becomes one batched loop that stops when the slowest configuration of
    the batch is done (finished ones are masked), as under any `vmap`. The compilation is
    reused by every batch, and by later sweeps of the same `fn` object and shapes (define
    `fn` once rather than as a fresh lambda per call).

    With `out`, each finished batch is written to `out/batch_00000.npz`, ... (temporary file
    and `os.replace`, so a killed sweep leaves only whole files) next to `out/sweep.json`, a
    fingerprint of the sweep; a rerun checks the fingerprint, loads the finished batches and
    computes only the missing ones. The fingerprint covers what determines the results: a
    SHA-256 of the jaxpr of `fn` traced on one configuration (its operations, shapes and
    literals) and of the values of its constants (closed-over arrays, `eqx.Module` fields,
    `jax.tree_util.Partial` arguments), and of the grid's values; not the function's name.
    Progress goes to the `logging` logger `"node_flow.sweep"`.

    Failures are data, not numbers: run flows inside `fn` with `throw=False` and return the
    [`node_flow.FlowSolution`][] (or its `.result`); configurations whose result code is not
    successful are stored with it and listed in `SweepResult.failed` with the reason. A
    failure raised inside a batch (e.g. `throw=True`) is a `RuntimeError` naming the batch.

    Results equal those of `jax.jit(fn)` on each configuration alone, bit for bit, whenever
    XLA compiles the batched and single programs to the same arithmetic. On CPU this holds
    for diffrax gradient flows whose data belong to the configuration (checked in
    `tests/test_sweep.py`: 16 flows on 4 devices); a matrix operand shared by the whole batch
    can be fused into one larger product, and one configuration per device is partitioned
    from a batched program: both were seen to change the last bits (≤ 3e-14).

    Multi-host: call `jax.distributed.initialize()` first, then `sweep` identically in every
    process; `devices` defaults to all global devices, every process gets the gathered
    results, and only process 0 writes to `out` (a folder shared by all hosts). See
    `docs/multihost.md`.

    **Arguments:**

    - `fn`: one configuration ↦ a pytree of arrays (a `FlowSolution` will do). Must be
      traceable by `jax.vmap`; it may be a function or an `eqx.Module` holding arrays.
    - `grid`: a pytree whose leaves are arrays (NumPy, JAX, or typed PRNG keys such as
      `jax.random.split(key, N)`), all with the same leading length $N$.
    - `devices`: the devices to shard over (default `jax.devices()`, all of them).
    - `batch_size`: configurations per batch, a multiple of the number of devices (a
      `ValueError` otherwise). Default: all $N$, rounded up to a multiple of the devices.
      Smaller batches bound memory and make an interrupted sweep lose less work.
    - `out`: a folder for finished batches and the manifest, to resume an interrupted sweep.
      A folder holding a different sweep is a `ValueError` naming what differs; a damaged
      batch file is a `ValueError` naming the file (delete it to recompute that batch).
    - `on_batch`: optional `(index, results) ↦ None`, called after each computed batch (and
      after it is written) with the batch's results still on the devices, sharded, $B$ rows
      including any padding. For progress bars or streaming elsewhere.

    **Returns:** a [`node_flow.SweepResult`][] with `configs`, `results` (leading axis $N$),
    `sharding`, `batch_size`, which batches were `computed` and `loaded`, and the `failed`
    configurations.

    **On a CPU**, keep independent LAPACK calls (QR, SVD, eigh) in `fn` few: XLA runs them
    concurrently, and with more of them than CPU threads jaxlib 0.10 deadlocked on a
    2-core machine (the process slept forever). node_flow's initializations draw all of a
    network's frames with one batched QR for this reason; batch your own the same way.
    """
    if not callable(fn):
        raise TypeError(f"sweep: `fn` must be callable (configuration ↦ results); got {fn!r}.")
    devices = list(jax.devices() if devices is None else devices)
    if not devices or len(set(devices)) != len(devices):
        raise ValueError("sweep: `devices` must be a non-empty sequence of distinct devices.")
    treedef, leaves, impls = _host_grid(grid)
    num_configs, num_devices = leaves[0].shape[0], len(devices)
    size = _batch_size(batch_size, num_configs, num_devices)
    num_batches = math.ceil(num_configs / size)
    mesh = Mesh(np.asarray(devices), (_AXIS,))
    sharding = NamedSharding(mesh, PartitionSpec(_AXIS))

    result_struct = _output_structure(fn, treedef, leaves, impls, size, sharding)
    result_leaves, result_treedef = jax.tree.flatten(result_struct)

    store = None
    if out is not None:
        closed = _jaxpr_of_one(fn, treedef, leaves, impls)
        manifest = fingerprint(
            fn, closed, treedef, leaves, impls, result_treedef, result_leaves, size
        )
        store = SweepStore(out, manifest, write=jax.process_index() == 0)
    done = store.done(num_batches) if store is not None else [False] * num_batches
    if jax.process_count() > 1:
        done = [bool(d) for d in multihost_utils.broadcast_one_to_all(np.asarray(done))]

    _log.info(
        "sweep %s: %d configurations, %d batch(es) of %d on %d device(s)%s",
        getattr(fn, "__name__", type(fn).__name__),
        num_configs,
        num_batches,
        size,
        num_devices,
        f", {sum(done)} already in {out}" if any(done) else "",
    )
    # Read every finished batch first: a damaged file is reported before any computation.
    parts: dict[int, list[np.ndarray]] = {}
    for k in [k for k in range(num_batches) if done[k]]:
        rows = min(size, num_configs - k * size)
        expected = [((rows, *x.shape), np.dtype(x.dtype)) for x in result_leaves]
        parts[k] = store.load(k, expected)
    for k in range(num_batches):
        if not done[k]:
            parts[k], on_devices = _compute_batch(fn, k, size, leaves, treedef, impls, sharding)
            if store is not None:
                store.save(k, parts[k])
            if on_batch is not None:
                on_batch(k, on_devices)

    results = [np.concatenate(column) for column in zip(*(parts[k] for k in range(num_batches)))]
    failed = _failures(result_struct, results)
    if failed:
        _log.warning(
            "sweep: %d of %d configurations failed (listed in SweepResult.failed), e.g. "
            "configuration %d: %s",
            len(failed),
            num_configs,
            *next(iter(failed.items())),
        )
    return SweepResult(
        configs=grid,
        results=jax.tree.unflatten(result_treedef, results),
        sharding=sharding,
        batch_size=size,
        computed=tuple(k for k in range(num_batches) if not done[k]),
        loaded=tuple(k for k in range(num_batches) if done[k]),
        failed=failed,
    )
