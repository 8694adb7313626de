"""The persistent compilation cache (`nf.enable_compilation_cache`): where it goes, how it is
turned off, bad input refused before anything changes, and — in fresh processes — that a warm
or a corrupted cache gives the same flow as a cold one, equal to the closed form."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import node_flow as nf
from node_flow._cache import cache_dir, ENV_VAR


def test_environment_variable_wins_and_off_disables(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert cache_dir(tmp_path / "arg") == tmp_path / "env"
    for off in ("off", "OFF", "0", "false", "none"):
        monkeypatch.setenv(ENV_VAR, off)
        assert cache_dir(tmp_path / "arg") is None
    monkeypatch.delenv(ENV_VAR)
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "node_flow" / "jax"


def test_bad_input_is_refused_before_any_setting_changes(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(TypeError, match=r"enable_compilation_cache: `path` must be a folder"):
        nf.enable_compilation_cache(3.0)
    with pytest.raises(ValueError, match=r"`min_compile_seconds` must be a number ≥ 0; got -1"):
        nf.enable_compilation_cache(tmp_path, min_compile_seconds=-1)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"cannot use the cache folder .*NODE_FLOW_CACHE_DIR=off"):
        nf.enable_compilation_cache(blocker / "jax")


# A fresh process: the flow of a one-layer network z' = -(zX - Y)Xᵀ/N, whose closed form is
# z(t) = z* + (z0 - z*) expm(-t XXᵀ/N), z* = YXᵀ(XXᵀ)⁻¹, with the cache at argv[1]; prints
# the final z, its error against the closed form, and the persistent-cache hits.
_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, scipy.linalg
    import node_flow as nf
    hits = []
    class Hits(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Persistent compilation cache hit"):
                hits.append(record.args[0])
    logger = logging.getLogger("jax._src.compiler")
    logger.addHandler(Hits())
    logger.setLevel(logging.DEBUG)
    nf.enable_compilation_cache(sys.argv[1])
    rng = np.random.default_rng(0)
    X, Y, z0 = rng.standard_normal((3, 6)), rng.standard_normal((2, 6)), rng.standard_normal((2, 3))
    loss = nf.LeastSquares(X, Y)
    sol = nf.gradient_flow(nf.LinearNetwork((jnp.asarray(z0),)), loss, 2.0,
                           ts=jnp.linspace(0.0, 2.0, 5), rtol=1e-11, atol=1e-11)
    A = X @ X.T / 6
    zstar = Y @ X.T @ np.linalg.inv(X @ X.T)
    exact = zstar + (z0 - zstar) @ scipy.linalg.expm(-2.0 * A)
    z = np.asarray(sol.zs[-1])
    # Flows with a kernel (its checks) and a sweep, as the studies run them.
    square = nf.LeastSquares(X, rng.standard_normal((3, 6)))
    kernel = jax.tree_util.Partial(nf.kernels.relaxed_balanced, lambdas=jnp.array([0.5]))
    nf.intrinsic_flow(jnp.eye(3), square, kernel, 1.0, ts=jnp.linspace(0.0, 1.0, 3))
    nf.sweep(lambda c: nf.intrinsic_flow(c * jnp.eye(3), square, nf.kernels.neural_ode, 1.0,
                                         throw=False).zs, jnp.array([1.0, 2.0]))
    print(json.dumps({"z": z.tolist(), "err": float(np.max(np.abs(z - exact))),
                      "hits": hits}))
    """
)


def _run(cache, tmp_path):
    script = tmp_path / "flow.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_warm_and_corrupted_caches_give_the_cold_result(tmp_path):
    """Cold, warm, then every entry truncated: the same z bit for bit (the same executable,
    or a fresh compilation of the same program), within 1e-8 of the closed form (a solve at
    rtol = atol = 1e-11 over t ∈ [0, 2] of a contracting linear flow). The warm run loads
    the flows themselves (a program holding a host callback, such as an `eqx.error_if`
    check of traced save times, a kernel's parameters or a forward solve, is never
    written): the parameter flow, an intrinsic flow and a sweep of intrinsic flows."""
    cache = tmp_path / "cache"
    cold = _run(cache, tmp_path)
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert cold["hits"] == [] and entries, "the cold run must write entries"
    warm = _run(cache, tmp_path)
    flows = {"jit__gradient_flow_core", "jit__intrinsic_flow_core", "jit__run_batch"}
    assert flows <= set(warm["hits"]), f"flows not loaded from the cache: {warm['hits']}"
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[: max(1, entry.stat().st_size // 2)])
    corrupt = _run(cache, tmp_path)
    assert cold["z"] == warm["z"] == corrupt["z"]
    assert max(cold["err"], warm["err"], corrupt["err"]) <= 1e-8
