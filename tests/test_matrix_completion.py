"""`experiments/matrix_completion.py` at small sizes: the nuclear-norm solver against 2 × 2
closed forms, the depth-1 flow to the loss threshold against its closed form, the grid on
two worker processes against one, and the flags refused before computing."""

import json
import sys
from argparse import Namespace
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import matrix_completion as mc  # noqa: E402


MISSING_00 = jnp.array([[False, True], [True, True]])


@pytest.mark.parametrize("w22, x_star", [(0.0, 0.0), (1.0, 1.0)])
def test_nuclear_norm_completion_of_2x2_matches_closed_form(w22, x_star):
    """Complete [[x, 1], [1, w22]]. w22 = 0: ‖·‖_* = √(x² + 4), minimal at x = 0;
    w22 = 1: ‖·‖_* = 1 + x for x ≥ 1 and √((1 − x)² + 4) below, minimal at x = 1; both
    minima equal 2. The solver stops on its certified duality gap ≤ 1e-10, so the nuclear
    norm is within 1e-10·2 of 2; the norm grows like (x − x*)²/4 around x*, so
    |x − x*| ≤ 2√(2e-10) ≈ 3e-5 (asserted: 1e-4)."""
    b = jnp.array([[0.0, 1.0], [1.0, w22]])
    X, k, gap = mc.nuclear_norm_completion(MISSING_00, b, 1.0, 1e-10, 100_000)
    assert float(gap) <= 1e-10
    np.testing.assert_array_equal(np.asarray(X)[MISSING_00], np.asarray(b)[MISSING_00])
    assert float(jnp.sum(jnp.linalg.svd(X, compute_uv=False))) == pytest.approx(2.0, abs=1e-9)
    assert float(X[0, 0]) == pytest.approx(x_star, abs=1e-4)


@pytest.mark.slow  # two compilations of the flow (the stop, then the end at the stop)
def test_depth_1_flow_stops_at_the_closed_form_time_with_the_closed_form_matrix():
    """Plain gradient flow on z: observed entries relax as e^{−t/m}, so
    ℓ(t) = ℓ(0) e^{−2t/m} and ℓ = target at t* = (m/2) ln(ℓ(0)/target); unobserved entries
    keep z0. The stop is root-found on the interpolant (Newton, 1e-10) of a solve at rtol
    1e-10: the time is good to ~1e-9 relative (1e-7 asserted), z to ~1e-10·|z| (1e-8)."""
    W, omegas, unit = mc.problem(seed=2, n=4, rank=1, norm=4.0, observed=(7,))
    loss = mc.completion_loss(W, *omegas[7])
    z0 = 0.1 * unit
    args = Namespace(rtol=1e-10, atol=1e-12, max_steps=2000, target_loss=1e-6)
    z, info = mc.flow_to_target(z0, loss, 1, 1e5, args)
    assert info["reached_target"]
    t_star = 7 / 2 * np.log(float(loss(z0)) / 1e-6)
    assert info["t_stop"] == pytest.approx(t_star, rel=1e-7)
    np.testing.assert_allclose(z, mc.depth1_closed_form(z0, loss, t_star), rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--depths", "1"], "--depths"),
        (["--scales", "0"], "--scales"),
        (["--scales", "1e-2", "1e-2"], "--scales"),
        (["--observed", "20000"], "--observed"),
        (["--check-observed", "3000"], "--check-observed"),
        (["--nuclear-tol", "1"], "--nuclear-tol"),
        (["--out", "/proc/forbidden"], "--out"),
    ],
)
def test_matrix_completion_refuses_bad_flags_naming_them(flags, named, capsys):
    with pytest.raises(SystemExit):
        mc.parse_args(flags)
    assert named in capsys.readouterr().err


@pytest.mark.slow  # two worker processes, each importing JAX and compiling tiny flows
def test_grid_on_two_workers_equals_one_process_and_resumes_without_recomputing(tmp_path):
    """The grid's entries are independent: computed by two spawned workers (one XLA thread
    each) they must match the same entries computed in this process. The programs are the
    same but XLA may sum in another order with one thread, so the results agree to rounding
    grown over the adaptive solve (measured ≤ 6e-9 relative on the test error, 1e-12 on the
    stop time; the solves run at rtol 1e-8): 1e-6 asserted, with the same step counts. A
    second run from the finished store computes nothing (its files are left untouched)."""
    flags = ["--n", "6", "--rank", "1", "--norm", "6", "--observed", "20", "30", "--depths",
             "2", "--scales", "1e-1", "1e-2", "--check-observed", "20", "--check-depth", "2",
             "--check-scale", "1e-1", "--nuclear-max-iter", "200"]  # fmt: skip
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        mc.main(flags + ["--workers", str(workers), "--out", str(out)])
        runs[workers] = json.loads((out / "summary.json").read_text())
    one, two = runs[1], runs[2]
    assert len(one["rows"]) == len(two["rows"]) == 8  # 2 observed × depths 1, 2 × 2 scales
    for a, b in zip(one["rows"] + [one["check"]], two["rows"] + [two["check"]]):
        assert (a["depth"], a.get("scale"), a["observed"]) == (
            b["depth"],
            b.get("scale"),
            b["observed"],
        )
        for key in (
            "test_error",
            "effective_rank",
            "final_loss",
            "t_stop",
            "t",
            "rel_z_difference",
        ):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), key
        assert a.get("steps") == b.get("steps")
    for a, b in zip(one["nuclear"], two["nuclear"]):
        assert (a["iterations"], a["test_error"]) == pytest.approx(
            (b["iterations"], b["test_error"]), rel=1e-9
        )
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "w2" / "runs").iterdir()}
    mc.main(flags + ["--workers", "2", "--out", str(tmp_path / "w2")])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
