"""`experiments/incremental_learning.py` at a small size: the depth-1 flow of matrix sensing
is linear, so its singular-value crossing times have an independent closed form; the
balanced factors multiply to z0; the phase-overlap measure on known intervals; the flags are
refused before computing."""

import sys
from argparse import Namespace
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import incremental_learning as il  # noqa: E402


def _linear_flow(A, y, z0):
    r"""$z(t)$ of $\dot z = -(H z - b)$, $H = A^\top A/m$, $b = A^\top y/m$ (flattened), by the
    eigendecomposition of $H$: $z(t) = z_0 - V\,\mathrm{diag}((1 - e^{-\lambda t})/\lambda)\,
    V^\top (H z_0 - b)$ (the limit $t$ at $\lambda = 0$)."""
    m = A.shape[0]
    Af = np.asarray(A).reshape(m, -1)
    H, b = Af.T @ Af / m, Af.T @ np.asarray(y) / m
    lam, V = np.linalg.eigh(H)
    g0 = V.T @ (H @ np.asarray(z0).ravel() - b)
    shape = z0.shape

    def z(t):
        safe = np.where(lam > 1e-12, lam, 1.0)
        w = np.where(lam > 1e-12, -np.expm1(-lam * t) / safe, t)
        return (np.asarray(z0).ravel() - V @ (w * g0)).reshape(shape)

    return z


def _first_crossing(f, level, T):
    """First t in [0, T] with f(t) ≥ level: a 4,001-point scan, then bisection to 1e-14."""
    grid = np.linspace(0.0, T, 4001)
    vals = np.array([f(t) for t in grid])
    above = np.flatnonzero(vals >= level)
    if len(above) == 0:
        return np.nan
    lo, hi = grid[above[0] - 1], grid[above[0]]
    while hi - lo > 1e-14 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if f(mid) >= level else (mid, hi)
    return hi


@pytest.mark.slow  # one dense solve and the vmapped crossing search: two compilations
def test_depth_1_crossing_times_match_the_closed_form_of_the_linear_flow():
    """d = 6, m = 30 < d² (underdetermined, as in the study). The study's dense solve and
    `crossing_time` against the eigendecomposition solution: the flow's error (rtol 1e-10)
    moves σ_i(z(t)) by ~1e-9, i.e. a crossing time by 1e-9 / slope (slopes are O(1)
    here), so 1e-6 relative leaves a wide margin while catching a wrong vector field, a
    wrong crossing or a save-grid time (the grid spacing is T/300 ≈ 3e-2)."""
    A, y, W, z0 = il.problem(seed=3, d=6, m=30, scale=1e-3)
    T = 8.0
    args = Namespace(rtol=1e-10, atol=1e-12, max_steps=2000)
    rec = il.run_depth(A, y, W, z0, 1, T, args)
    assert rec["failed"] is None
    z = _linear_flow(A, y, z0)
    sigma = lambda t, i: np.linalg.svd(z(t), compute_uv=False)[i]
    expected = [_first_crossing(lambda t: sigma(t, i), s / 2, T) for i, s in enumerate(il.TARGET)]
    measured = np.array([np.nan if v is None else v for v in rec["t_half_target"]])
    assert np.isfinite(expected).sum() >= 2  # the check is not vacuous
    np.testing.assert_array_equal(np.isnan(measured), np.isnan(expected))
    ok = np.isfinite(expected)
    np.testing.assert_allclose(measured[ok], np.array(expected)[ok], rtol=1e-6, atol=0)
    final = np.linalg.svd(z(T), compute_uv=False)[:4]
    np.testing.assert_allclose(rec["final_sigma"], final, rtol=1e-7)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_balanced_factors_multiply_to_z0_and_are_balanced(depth):
    """U_N ⋯ U_1 = z0 and U_{j+1}ᵀU_{j+1} = U_j U_jᵀ, to rounding (1e-12 of |z0|² = 1)."""
    _, _, _, z0 = il.problem(seed=1, d=6, m=2, scale=1.0)
    layers = il.balanced_network(z0, depth).weights
    prod = layers[0]
    for U in layers[1:]:
        prod = U @ prod
    np.testing.assert_allclose(prod, z0, atol=1e-12)
    for lo, hi in zip(layers[:-1], layers[1:]):
        np.testing.assert_allclose(hi.T @ hi, lo @ lo.T, atol=1e-12)


def test_phase_overlap_is_zero_for_disjoint_and_one_for_nested_phases():
    """Known intervals: [1, 2] and [3, 6] do not overlap; [3, 6] contains [4, 5]."""
    rec = {
        "t_half_target": [1.5, 4.5, 4.5],
        "t10_final": [1.0, 3.0, 4.0],
        "t50_final": [1.5, 4.5, 4.5],
        "t90_final": [2.0, 6.0, 5.0],
    }
    out = il.analyse(rec)
    assert out["phase_overlap_fraction"] == [0.0, 1.0]
    np.testing.assert_allclose(out["ratios_t_next_over_t"], [3.0, 1.0])
    np.testing.assert_allclose(out["relative_width"], [1 / 1.5, 3 / 4.5, 1 / 4.5])


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--depths", "0"], "--depths"),
        (["--depths", "2", "2"], "--depths"),
        (["--scale", "2"], "--scale"),
        (["--rtol", "2"], "--rtol"),
        (["--d", "3"], "--d"),
        (["--out", "/proc/forbidden"], "--out"),
    ],
)
def test_incremental_learning_refuses_bad_flags_naming_them(flags, named, capsys):
    with pytest.raises(SystemExit):
        il.parse_args(flags)
    assert named in capsys.readouterr().err


def test_scalar_time_is_the_closed_form_at_depth_2():
    """The horizon's quadrature of u' = 2u(s − u) against Saxe's closed form."""
    s, u0 = 3.0, 1e-4
    closed = np.log((s / 2) * (s - u0) / (u0 * (s / 2))) / (2 * s)
    assert il.scalar_time(s, u0, 2) == pytest.approx(closed, rel=1e-12)
    assert jnp.isfinite(il.horizon(3, 1e-4))
