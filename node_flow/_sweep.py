r"""Sweeps: one function over many configurations, batched with `vmap`, sharded over devices.

A sweep evaluates $r_i = f(c_i)$ for configurations $c_1, \dots, c_N$ stacked along a leading
axis. Batches of $B$ configurations are placed on a one-axis device mesh with a
`NamedSharding`; the jit-compiled `vmap(f)` then runs data-parallel, XLA's SPMD partitioner
giving each device its $B/D$ configurations. One compiled function serves every batch;
finished batches can be written to disk (`_sweep_store.py`) and a rerun resumes from them.
"""

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ._sweep_store import fingerprint, SweepStore


_log = logging.getLogger("node_flow.sweep")
_AXIS = "batch"


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
    """

    configs: PyTree[Any]
    results: PyTree[Any]
    sharding: NamedSharding = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    computed: tuple[int, ...] = eqx.field(static=True)
    loaded: tuple[int, ...] = eqx.field(static=True)

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
    out = jax.vmap(lambda c: fn(_unflatten_config(treedef, c, impls)))(leaves)
    return jax.tree.map(lambda y: jax.lax.with_sharding_constraint(y, sharding), out)


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


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
    computes only the missing ones. Progress goes to the `logging` logger `"node_flow.sweep"`.

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
      A folder holding a different sweep is a `ValueError` naming what differs.
    - `on_batch`: optional `(index, results) ↦ None`, called after each computed batch (and
      after it is written) with the batch's results still on the devices, sharded, $B$ rows
      including any padding. For progress bars or streaming elsewhere.

    **Returns:** a [`node_flow.SweepResult`][] with `configs`, `results` (leading axis $N$),
    `sharding`, `batch_size` and which batches were `computed` and `loaded`.
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

    first = _unflatten_config(treedef, [jnp.asarray(x[0]) for x in leaves], impls)
    result_struct = eqx.filter_eval_shape(fn, first)
    result_leaves, result_treedef = jax.tree.flatten(result_struct)
    if not result_leaves:
        raise ValueError("sweep: `fn` returns no arrays; return a pytree of arrays.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(result_struct)[0]:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            raise TypeError(
                f"sweep: `fn` must return a pytree of arrays; its output at "
                f"{jax.tree_util.keystr(path)} is a {type(leaf).__name__}."
            )
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError(
                f"sweep: `fn` returns a PRNG key at {jax.tree_util.keystr(path)}; return "
                "`jax.random.key_data(key)` instead."
            )

    store = None
    if out is not None:
        manifest = fingerprint(fn, treedef, leaves, impls, result_treedef, result_leaves, size)
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
    parts: list[list[np.ndarray]] = []
    computed, loaded = [], []
    for k in range(num_batches):
        start, stop = k * size, min((k + 1) * size, num_configs)
        if done[k]:
            expected = [((stop - start, *x.shape), np.dtype(x.dtype)) for x in result_leaves]
            parts.append(store.load(k, expected))
            loaded.append(k)
            continue
        tic = time.perf_counter()
        rows = [x[start:stop] for x in leaves]
        pad = size - (stop - start)
        if pad:
            rows = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in rows]
        placed = [
            jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i]) for x in rows
        ]
        batch_out = _run_batch(fn, placed, treedef, impls, sharding)
        host = [_to_host(y)[: stop - start] for y in jax.tree.leaves(batch_out)]
        if store is not None:
            store.save(k, host)
        parts.append(host)
        computed.append(k)
        _log.info(
            "sweep: batch %d/%d (configurations %d-%d) in %.2f s",
            k + 1,
            num_batches,
            start,
            stop - 1,
            time.perf_counter() - tic,
        )
        if on_batch is not None:
            on_batch(k, batch_out)

    results = [np.concatenate(column) for column in zip(*parts)]
    return SweepResult(
        configs=grid,
        results=jax.tree.unflatten(result_treedef, results),
        sharding=sharding,
        batch_size=size,
        computed=tuple(computed),
        loaded=tuple(loaded),
    )
