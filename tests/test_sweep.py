"""Sweeps: batched and sharded evaluation of one function over many configurations.

The multi-device claims run in subprocesses with `--xla_force_host_platform_device_count=4`
(four CPU devices), so this test process keeps its single device; each subprocess prints a
JSON report that the tests check."""

import json
import os
import signal
import socket
import subprocess
import sys

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from jax.tree_util import Partial

import node_flow as nf
from node_flow._sweep import sweep, SweepResult


# The flow of the multi-device checks: a depth-2 residual network of width 2 trained on
# least squares, initial weights, data and λ drawn per configuration. The data belong to the
# configuration so that every product stays batched under vmap: a product with an operand
# shared by the whole batch becomes one larger matrix product, which XLA's CPU backend may
# sum in another order (seen: 3e-14 at 2 or 3 configurations per device).
_SETUP = """
import json, os, signal, sys, time
import diffrax
import equinox as eqx
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import node_flow as nf
from node_flow._sweep import sweep

tmp = sys.argv[2]
executed = []
def count(i):
    executed.extend(np.atleast_1d(np.asarray(i)).tolist())

ts = jnp.linspace(0.0, 1.0, 3)
def flow(cfg):
    jax.debug.callback(count, cfg["index"])
    ka, kx, ky = jax.random.split(cfg["key"], 3)
    loss = nf.LeastSquares(jax.random.normal(kx, (2, 3)), jax.random.normal(ky, (2, 3)))
    A = 0.5 * jax.random.normal(ka, (2, 2, 2)) + cfg["lam"]
    sol = nf.gradient_flow(nf.ResidualLinearNetwork(A), loss, 1.0, ts=ts)
    return {"zs": sol.zs, "losses": sol.losses, "steps": sol.stats["num_steps"]}

N = 16
grid = {
    "index": jnp.arange(N),
    "key": jax.random.split(jax.random.key(0), N),
    "lam": jnp.linspace(-0.2, 0.2, N),
}
def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
def error(thunk):
    try:
        thunk()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None
report = {"devices": jax.device_count()}
"""

_FIRST = """
one = jax.jit(flow)
reference = jax.tree.map(
    lambda *x: np.stack(x), *[one(jax.tree.map(lambda x: x[i], grid)) for i in range(N)]
)
np.savez(os.path.join(tmp, "reference.npz"), **reference)
seen = []
def inspect(k, out):
    y = out["zs"]
    seen.append({
        "type": type(y.sharding).__name__,
        "spec": list(y.sharding.spec),
        "devices": len(y.sharding.device_set),
        "shard_rows": sorted(s.data.shape[0] for s in y.addressable_shards),
        "shard_devices": len({s.device for s in y.addressable_shards}),
    })
tic = time.perf_counter()
res = sweep(flow, grid, on_batch=inspect)
report["seconds_sweep"] = time.perf_counter() - tic
report["batch_size"] = res.batch_size
report["bitwise"] = same(res.results, reference)
report["sharding"] = seen
report["result_sharding"] = list(res.sharding.spec)
res8 = sweep(flow, grid, batch_size=8)
report["bitwise_batch_8"] = same(res8.results, reference)

cheap = lambda c: {"double": 2.0 * c["x"], "norm": jnp.sum(c["x"] ** 2)}
small = {"x": jnp.arange(15.0).reshape(5, 3)}
padded = sweep(cheap, small)
report["padded"] = {
    "batch_size": padded.batch_size,
    "rows": int(padded.results["double"].shape[0]),
    "exact": bool(np.array_equal(padded.results["double"], 2.0 * np.asarray(small["x"]))),
}
report["errors"] = {
    "batch_size": error(lambda: sweep(cheap, small, batch_size=6)),
    "mismatched": error(lambda: sweep(cheap, {"x": jnp.ones((5, 3)), "y": jnp.ones(4)})),
}

# The resumable run: killed (SIGKILL, no cleanup) right after its first batch is on disk.
executed.clear()
print(json.dumps(report), flush=True)
def kill(k, out):
    print(json.dumps({"killed_after": k, "executed": sorted(executed)}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
sweep(flow, grid, batch_size=8, out=os.path.join(tmp, "run"), on_batch=kill)
"""

_SECOND = """
reference = dict(np.load(os.path.join(tmp, "reference.npz")))
executed.clear()
stamp = os.stat(os.path.join(tmp, "run", "batch_00000.npz")).st_mtime_ns
res = sweep(flow, grid, batch_size=8, out=os.path.join(tmp, "run"))
report["computed"] = list(res.computed)
report["loaded"] = list(res.loaded)
report["executed"] = sorted(executed)
report["untouched"] = os.stat(os.path.join(tmp, "run", "batch_00000.npz")).st_mtime_ns == stamp
report["bitwise"] = same(res.results, reference)
other = dict(grid, lam=grid["lam"] + 1e-3)
rerun = lambda: sweep(flow, other, batch_size=8, out=os.path.join(tmp, "run"))
report["errors"] = {"other_sweep": error(rerun)}
print(json.dumps(report), flush=True)
"""


def _run(stage: str, tmp) -> subprocess.CompletedProcess:
    code = _SETUP + {"first": _FIRST, "second": _SECOND}[stage]
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    return subprocess.run(
        [sys.executable, "-c", code, stage, str(tmp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _reports(proc) -> list[dict]:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr[-3000:]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """Both subprocesses: the first checks and is killed mid-sweep, the second resumes."""
    tmp = tmp_path_factory.mktemp("sweep")
    first = _run("first", tmp)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    report, killed = _reports(first)
    second = _run("second", tmp)
    assert second.returncode == 0, second.stderr[-3000:]
    (resumed,) = _reports(second)
    return report, killed, resumed


@pytest.mark.slow
def test_sweep_on_four_devices_is_bitwise_the_one_by_one_results(four_devices):
    """16 gradient flows swept on 4 host devices (default batch: all 16, 4 per device; and
    batches of 8) equal, bit for bit, the 16 flows run one by one through `jax.jit(fn)`."""
    report, _, _ = four_devices
    assert report["devices"] == 4
    assert report["batch_size"] == 16
    assert report["bitwise"] is True
    assert report["bitwise_batch_8"] is True


@pytest.mark.slow
def test_sweep_batches_are_sharded_over_every_device(four_devices):
    """Each batch's results are a NamedSharding over the 4 devices along "batch", one
    quarter of the configurations per device."""
    report, _, _ = four_devices
    (seen,) = report["sharding"]
    assert seen["type"] == "NamedSharding"
    assert seen["spec"] == ["batch"]
    assert seen["devices"] == 4 and seen["shard_devices"] == 4
    assert seen["shard_rows"] == [4, 4, 4, 4]
    assert report["result_sharding"] == ["batch"]


@pytest.mark.slow
def test_sweep_pads_the_last_batch_and_drops_the_padding(four_devices):
    """5 configurations on 4 devices run as one batch of 8 (3 copies of the last) and
    come back as 5 exact rows."""
    padded = four_devices[0]["padded"]
    assert padded == {"batch_size": 8, "rows": 5, "exact": True}


@pytest.mark.slow
def test_killed_sweep_resumes_and_computes_only_the_missing_batch(four_devices):
    """A sweep of 2 batches killed by SIGKILL after its first batch reruns only the second:
    fn executes on configurations 8..15 alone, batch 0 is read back untouched, and the
    results are still bitwise the one-by-one results."""
    _, killed, resumed = four_devices
    assert killed == {"killed_after": 0, "executed": list(range(8))}
    assert resumed["loaded"] == [0] and resumed["computed"] == [1]
    assert resumed["executed"] == list(range(8, 16))
    assert resumed["untouched"] is True
    assert resumed["bitwise"] is True


@pytest.mark.slow
def test_sweep_rejects_bad_input_with_clear_errors(four_devices):
    """A batch size that does not divide over the devices, leaves disagreeing on N, and an
    `out` folder holding another sweep are ValueErrors that say what to change."""
    errors = four_devices[0]["errors"] | four_devices[2]["errors"]
    assert "not a multiple of the 4 devices" in errors["batch_size"]
    assert "batch_size = 4 or 8" in errors["batch_size"]
    assert "disagree on the number of configurations" in errors["mismatched"]
    assert "['x']: 5" in errors["mismatched"] and "['y']: 4" in errors["mismatched"]
    assert "different sweep" in errors["other_sweep"] and "grid_hash" in errors["other_sweep"]


_DISTRIBUTED = """
import json, sys
import diffrax
import equinox as eqx
import jax
jax.config.update("jax_enable_x64", True)
process, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process)
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from node_flow._sweep import sweep
fn = lambda c: {"y": jnp.sin(c["x"]) * c["s"], "n": jnp.sum(c["x"] ** 2)}
grid = {"x": jnp.arange(30.0).reshape(10, 3), "s": jnp.arange(10.0)}
res = sweep(fn, grid, batch_size=4, out=out)
expected = jax.vmap(fn)(grid)
exact = all(np.array_equal(res.results[k], expected[k]) for k in expected)
print(json.dumps({"devices": [jax.device_count(), jax.local_device_count()],
                  "computed": res.computed, "loaded": res.loaded, "exact": exact}))
"""


@pytest.mark.slow
def test_sweep_spans_two_processes_under_jax_distributed(tmp_path):
    """Two processes of 2 host devices each (`jax.distributed.initialize`, 4 global
    devices): both get all 10 results, exactly; a rerun of both loads the 3 batches."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    runs = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _DISTRIBUTED, str(i), str(port), str(tmp_path / "out")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
        runs.append([json.loads(o.strip().splitlines()[-1]) for o, _ in outs])
    for report in runs[0]:
        assert report == {"devices": [4, 2], "computed": [0, 1, 2], "loaded": [], "exact": True}
    for report in runs[1]:
        assert report == {"devices": [4, 2], "computed": [], "loaded": [0, 1, 2], "exact": True}


# --- one device: this process -------------------------------------------------------------


def _cheap(cfg):
    return {"y": jnp.sin(cfg["x"]) * cfg["scale"], "bits": jax.random.bits(cfg["key"], (2,))}


def _grid(n=6):
    return {
        "x": jnp.linspace(0.0, 1.0, 3 * n).reshape(n, 3),
        "scale": jnp.arange(1.0, n + 1.0),
        "key": jax.random.split(jax.random.key(3), n),
    }


def test_sweep_matches_the_loop_and_pairs_results_with_configurations():
    """Row i of the results is fn of configuration i (typed PRNG keys included), and
    `result[i]` returns that configuration with its result."""
    grid = _grid()
    res = sweep(_cheap, grid, batch_size=4)
    assert isinstance(res, SweepResult) and len(res) == 6
    for i in range(6):
        config, out = res[i]
        expected = jax.jit(_cheap)(config)
        assert np.array_equal(out["y"], expected["y"])
        assert np.array_equal(out["bits"], expected["bits"])


def test_sweep_compiles_fn_once_for_all_batches(tmp_path):
    """Three batches of two: fn is traced once, for the batched program whose trace also
    gives the output's shapes, however many batches follow; with `out`, once more on one
    configuration for the fingerprint."""
    traces = []

    def fn(cfg):
        traces.append(None)
        return jnp.cos(cfg["x"])

    res = sweep(fn, {"x": jnp.arange(6.0)}, batch_size=2)
    assert res.computed == (0, 1, 2)
    assert len(traces) == 1
    assert np.allclose(res.results, np.cos(np.arange(6.0)), rtol=1e-15, atol=0)
    traces.clear()
    sweep(fn, {"x": jnp.arange(6.0) + 1}, batch_size=2, out=tmp_path)
    assert len(traces) == 1  # the fingerprint's; the batched program is the first sweep's


def test_sweep_with_out_reloads_finished_batches(tmp_path):
    """A finished sweep rerun with the same `out` loads every batch, computes none, and
    gives the same arrays; the folder holds the manifest and one file per batch."""
    first = sweep(_cheap, _grid(), batch_size=2, out=tmp_path)
    again = sweep(_cheap, _grid(), batch_size=2, out=tmp_path)
    assert first.computed == (0, 1, 2) and again.computed == () and again.loaded == (0, 1, 2)
    pairs = zip(jax.tree.leaves(first.results), jax.tree.leaves(again.results))
    assert all(np.array_equal(a, b) for a, b in pairs)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["batch_00000.npz", "batch_00001.npz", "batch_00002.npz", "sweep.json"]


def test_sweep_refuses_an_out_folder_of_another_sweep(tmp_path):
    """Changed values, a changed batch size, or batch files without a manifest: errors
    naming what differs, before anything is computed."""
    sweep(_cheap, _grid(), batch_size=2, out=tmp_path / "a")
    grid = _grid()
    grid["scale"] = grid["scale"] + 1.0
    with pytest.raises(ValueError, match="different sweep.*grid_hash"):
        sweep(_cheap, grid, batch_size=2, out=tmp_path / "a")
    with pytest.raises(ValueError, match="batch_size: stored 2, now 6"):
        sweep(_cheap, _grid(), out=tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "batch_00000.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="no sweep.json"):
        sweep(_cheap, _grid(), out=tmp_path / "b")


@pytest.mark.parametrize(
    "grid, match",
    [
        ({"x": jnp.ones((3, 2)), "y": jnp.ones((4,))}, "disagree on the number"),
        ({"x": [1.0, 2.0]}, "must be an array"),
        ({"x": jnp.ones(())}, "is a scalar"),
        ({"x": jnp.ones((0, 2))}, "no configurations"),
        ({}, "holds no arrays"),
    ],
)
def test_sweep_rejects_malformed_grids(grid, match):
    """Every leaf is an array with the same leading length N ≥ 1."""
    with pytest.raises((ValueError, TypeError), match=match):
        sweep(lambda c: c, grid)


# --- resuming: the fingerprint is the computation, not the name -----------------------------


def _make_named(scale):
    def f(x):  # the same qualified name for every scale: only the body's constant differs
        return scale * x

    return f


def _times(a, x):
    return a * x


class _Scaled(eqx.Module):
    a: jax.Array
    power: int = eqx.field(static=True)

    def __call__(self, x):
        return self.a * x**self.power


_CHANGED = {
    "another lambda body": (lambda x: 2.0 * x, lambda x: 3.0 * x),
    "same name, other body": (_make_named(2.0), _make_named(3.0)),
    "closure over another 0-d array": (
        _make_named(jnp.array([2.0, 1.0])[0]),
        _make_named(jnp.array([3.0, 1.0])[0]),
    ),
    "closure over another vector": (
        _make_named(jnp.array([1.0, 2.0])),
        _make_named(jnp.array([1.0, 2.5])),
    ),
    "Partial with another array": (
        Partial(_times, jnp.array(2.0)),
        Partial(_times, jnp.array(3.0)),
    ),
    "Partial with another float": (Partial(_times, 2.0), Partial(_times, 3.0)),
    "Module with another field": (_Scaled(jnp.array(2.0), 1), _Scaled(jnp.array(3.0), 1)),
    "Module with another static field": (_Scaled(jnp.array(2.0), 1), _Scaled(jnp.array(2.0), 2)),
    "last bit of a constant": (lambda x: x * 0.1, lambda x: x * np.nextafter(0.1, 1.0)),
}


@pytest.mark.parametrize("first, second", _CHANGED.values(), ids=list(_CHANGED))
def test_sweep_resume_refuses_a_function_that_computes_something_else(tmp_path, first, second):
    """Issue 12: `sweep(lambda x: 2*x, g, out=d)` then `sweep(lambda x: 3*x, g, out=d)`
    returned the first sweep's results, only the name being fingerprinted. Every variant that
    changes the results (body, closed-over constants, `Partial` arguments, module fields) is
    refused naming the computation; in a fresh folder the second function's own values come
    back (checked against NumPy on the host)."""
    grid = jnp.arange(1.0, 5.0)
    sweep(first, grid, batch_size=2, out=tmp_path / "run")
    with pytest.raises(ValueError, match="different sweep.*computation.*computes something else"):
        sweep(second, grid, batch_size=2, out=tmp_path / "run")
    fresh = sweep(second, grid, batch_size=2, out=tmp_path / "fresh")
    expected = np.asarray([np.asarray(second(x)) for x in np.arange(1.0, 5.0)])
    assert np.array_equal(fresh.results, expected)
    assert not np.array_equal(fresh.results, np.asarray([first(x) for x in np.arange(1.0, 5.0)]))


def test_sweep_resume_accepts_the_same_computation_under_another_name(tmp_path):
    """The name is not the identity: the same computation defined again (another lambda,
    a named function, the same closure rebuilt) resumes from every stored batch."""

    def double(x):
        return 2.0 * x

    grid = jnp.arange(4.0)
    sweep(lambda x: 2.0 * x, grid, batch_size=2, out=tmp_path)
    again = sweep(double, grid, batch_size=2, out=tmp_path)
    assert again.computed == () and again.loaded == (0, 1)
    rebuilt = sweep(_make_named(2.0), grid, batch_size=2, out=tmp_path)
    assert rebuilt.loaded == (0, 1)


# --- failures are data, not numbers ---------------------------------------------------------


@pytest.mark.slow
def test_sweep_lists_failed_flows_with_their_result_code_and_stores_it(tmp_path):
    """Issue 12: a failed flow inside a sweep came back (and was stored) as `inf`. Flows with
    `throw=False` and `max_steps=40`: a learning rate of 1e4 makes the explicit solver
    stiff (thousands of steps), 1 or 2 needs a handful. Exactly the stiff configurations are
    listed in `failed`, with the message of `RESULTS.max_steps_reached`; the others finish
    with finite losses; a rerun reads the codes back from disk."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    net = nf.init.gaussian(k1, (2, 2, 2))
    loss = nf.LeastSquares(jax.random.normal(k2, (2, 3)), jax.random.normal(k3, (2, 3)))

    def flow(rate):
        return nf.gradient_flow(net, loss, 1.0, time_scale=rate, max_steps=40, throw=False)

    rates = jnp.array([1.0, 1e4, 2.0, 1e4, 1.0])
    first = sweep(flow, rates, batch_size=2, out=tmp_path)
    assert set(first.failed) == {1, 3}
    assert first.failed[1] == nf.RESULTS[nf.RESULTS.max_steps_reached] == first.failed[3]
    assert np.all(np.isfinite(first.results.losses[[0, 2, 4]]))
    again = sweep(flow, rates, batch_size=2, out=tmp_path)
    assert again.loaded == (0, 1, 2) and again.failed == first.failed


def test_sweep_names_each_failing_code_and_counts_events_as_success():
    """Several result codes in one output: a configuration fails when any code is neither
    `successful` nor `event_occurred`, and the reason names where each failing code is."""

    def fn(x):
        flow = nf.RESULTS.where(x > 1.5, nf.RESULTS.blew_up, nf.RESULTS.successful)
        event = diffrax.RESULTS.event_occurred
        solve = diffrax.RESULTS.where(x < 0.5, event, diffrax.RESULTS.successful)
        diverged = optx.RESULTS.nonlinear_divergence
        root = optx.RESULTS.where(x > 2.5, diverged, optx.RESULTS.successful)
        return {"y": x, "flow": flow, "root": root, "solve": solve}

    res = sweep(fn, jnp.array([0.0, 1.0, 2.0, 3.0]))
    assert sorted(res.failed) == [2, 3]
    assert res.failed[2] == "['flow']: " + nf.RESULTS[nf.RESULTS.blew_up]
    assert "['root']: " + optx.RESULTS[optx.RESULTS.nonlinear_divergence] in res.failed[3]
    assert "['flow']: " in res.failed[3]


def test_sweep_without_result_codes_lists_non_finite_results_as_failed():
    """Without a result code in the output, a NaN or infinite result marks its configuration
    as failed (log of 0 and of a negative number), and says that no code tells why."""
    res = sweep(lambda x: {"log": jnp.log(x), "n": jnp.int32(1)}, jnp.array([1.0, -1.0, 0.0, 2.0]))
    assert sorted(res.failed) == [1, 2]
    assert "non-finite result at ['log']" in res.failed[1]
    assert "throw=False" in res.failed[2]


def test_sweep_names_the_batch_that_raised_and_keeps_the_finished_ones(tmp_path):
    """An error raised at run time inside a batch (a flow with `throw=True`, here
    `eqx.error_if`) is a RuntimeError naming the batch, its configurations, the original
    message and the `throw=False` alternative; the finished batch stays on disk."""
    fn = lambda x: eqx.error_if(x, x > 2.5, "x is too large")
    with pytest.raises(RuntimeError, match=r"batch 1 \(configurations 2-3\).*x is too large"):
        sweep(fn, jnp.arange(4.0), batch_size=2, out=tmp_path)
    assert (tmp_path / "batch_00000.npz").exists() and not (tmp_path / "batch_00001.npz").exists()
    with pytest.raises(RuntimeError, match="throw=False.*SweepResult.failed"):
        sweep(fn, jnp.arange(4.0), batch_size=2, out=tmp_path)


def _truncated(path):
    path.write_bytes(path.read_bytes()[:40])


def _garbage(path):
    path.write_bytes(b"not a batch")


def _other_keys(path):
    np.savez(path, other=np.zeros(2))


def _other_shape(path):
    np.savez(path, leaf_0000=np.zeros(3))


@pytest.mark.parametrize("damage", [_truncated, _garbage, _other_keys, _other_shape])
def test_sweep_names_a_damaged_batch_file_and_what_to_do(tmp_path, damage):
    """Issue 12: a corrupt batch file failed with "contains pickled data" without naming the
    file. Truncated, foreign, and mismatched files are ValueErrors naming the file and the
    fix, raised before anything is computed (the missing batch 0 is not recomputed); after
    deleting the file as told, the sweep completes."""
    grid = jnp.arange(4.0)
    sweep(jnp.sin, grid, batch_size=2, out=tmp_path)
    (tmp_path / "batch_00000.npz").unlink()
    damage(tmp_path / "batch_00001.npz")
    with pytest.raises(ValueError, match=r"batch_00001\.npz.*Delete .*batch_00001\.npz"):
        sweep(jnp.sin, grid, batch_size=2, out=tmp_path)
    assert not (tmp_path / "batch_00000.npz").exists()
    (tmp_path / "batch_00001.npz").unlink()
    res = sweep(jnp.sin, grid, batch_size=2, out=tmp_path)
    assert res.computed == (0, 1) and np.array_equal(res.results, np.sin(np.arange(4.0)))


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda x: {"y": x, "name": "a"}, r"output at \['name'\] is a str"),
        (lambda x: jax.random.key(0), "returns a PRNG key"),
        (lambda x: None, "returns no arrays"),
    ],
)
def test_sweep_rejects_outputs_that_are_not_arrays(fn, match):
    """The output of `fn` is checked from its one trace, before any batch runs."""
    with pytest.raises((TypeError, ValueError), match=match):
        sweep(fn, jnp.arange(2.0))


def test_a_kernel_check_failing_inside_a_swept_flow_fails_that_configuration_only():
    """A NaN imbalance λ in one configuration: the kernel's check, traced inside the flow,
    marks that flow's velocity NaN (no `eqx.error_if`, which would abort the whole batch
    and keep the program out of the compilation cache), so the flow fails with a named
    result listed in `failed`, and the other configurations equal their eager flows."""
    loss = nf.LeastSquares(jnp.eye(3), jnp.arange(9.0).reshape(3, 3) / 9)

    def flow(lam):
        kernel = Partial(nf.kernels.relaxed_balanced, lambdas=lam)
        return nf.intrinsic_flow(0.5 * jnp.eye(3), loss, kernel, 1.0, throw=False)

    lams = jnp.array([[0.5], [jnp.nan], [1.0]])
    swept = sweep(flow, lams)
    assert set(swept.failed) == {1}
    assert "not finite" in swept.failed[1]
    for i in (0, 2):
        eager = flow(lams[i])
        assert np.max(np.abs(swept.results.zs[i] - np.asarray(eager.zs))) <= 1e-12
    with pytest.raises(ValueError, match="`lambdas` holds NaN or inf"):
        flow(lams[1])  # eagerly, the kernel's own message
