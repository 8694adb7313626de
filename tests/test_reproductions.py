"""The reproductions of issue 14 (`experiments/learning_times.py`, `experiments/lazy_rich.py`)
at small sizes: each measured law against an independent computation (a closed form, a
quadrature, a matrix exponential), and each study's flags refused before computing."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import lazy_rich as lr  # noqa: E402
import learning_times as lt  # noqa: E402


# Solver tolerance of the crossing tests: the local error is 1e-12 relative, accumulated
# over a plateau of ln(1/z0) time constants (≲ 30), so the crossing time is accurate to
# ≲ 1e-10; the event's Newton root finder stops at 1e-10 relative. 1e-7 (the issue's
# target) leaves three orders of margin; the study measures ≤ 3e-12.
TOL = dict(rtol=1e-12, atol=1e-16)
S = jnp.array([0.5, 2.0])
Z0 = jnp.array([1e-2, 1e-5])


def _crossings(kernel, **extra):
    """Crossing times to s/2 of the scalar modes (S, Z0), vmapped over the two configurations."""
    cfg = {"s": S, "z0": Z0, "t1": jnp.full(2, 1e7), **extra}
    t, crossed, _, _ = jax.vmap(lt.scalar_crossing(kernel, TOL))(cfg)
    assert bool(jnp.all(crossed))
    return np.asarray(t)


def test_two_layer_crossing_times_match_saxe_and_imbalanced_closed_forms_to_1e_7():
    """Two layers through `kernels.relaxed_balanced` (one compilation): λ = 0 is the balanced
    network, u' = 2u(s − u), against Saxe's closed form; λ = −1.5 (the sign matters to the
    kernel's root a(a + λ) = σ², not to the law) against the closed form of
    σ' = √(λ² + 4σ²)(s − σ)."""
    lam = jnp.array([0.0, -1.5])
    t = _crossings(lt.relaxed_kernel, lam=lam)
    s, z0 = np.asarray(S), np.asarray(Z0)
    np.testing.assert_allclose(t[0], lt.saxe_time(s[0], z0[0], s[0] / 2), rtol=1e-7, atol=0)
    closed = lt.imbalanced_time(s[1], z0[1], s[1] / 2, -1.5)
    np.testing.assert_allclose(t[1], closed, rtol=1e-7, atol=0)


def test_depth_3_crossing_time_matches_quadrature_of_the_deep_law():
    t = _crossings(lt.balanced_kernel(3))
    quad = [lt.deep_time(float(s), float(z), float(s) / 2, 3) for s, z in zip(S, Z0)]
    np.testing.assert_allclose(t, quad, rtol=1e-7, atol=0)


@pytest.mark.parametrize("s, z0", [(0.5, 1e-2), (4.0, 1e-6)])
def test_theory_quadratures_agree_with_closed_forms(s, z0):
    """The quadrature of the deep law at L = 2 is Saxe's closed form, and the imbalanced
    closed form is its own quadrature: two independent formulas, agreeing to rounding
    (1e-12: 32 × 32 Gauss–Legendre nodes on an analytic integrand converge to ~1e-15)."""
    assert lt.deep_time(s, z0, s / 2, 2) == pytest.approx(lt.saxe_time(s, z0, s / 2), rel=1e-12)
    for lam in (0.0, 0.3, 5.0):
        closed = lt.imbalanced_time(s, z0, s / 2, lam)
        assert closed == pytest.approx(lt.imbalanced_time_quadrature(s, z0, s / 2, lam), rel=1e-12)
    assert lt.imbalanced_time(s, z0, s / 2, 0.0) == pytest.approx(lt.saxe_time(s, z0, s / 2))


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--z0", "0.3"], "--z0"),
        (["--depths", "1"], "--depths"),
        (["--rtol", "2"], "--rtol"),
        (["--s", "1", "1"], "--s"),
        (["--matrix-z0", "1"], "--matrix-z0"),
        (["--out", "/proc/forbidden"], "--out"),
    ],
)
def test_learning_times_refuses_bad_flags_naming_them(flags, named, capsys):
    with pytest.raises(SystemExit):
        lt.parse_args(flags)
    assert named in capsys.readouterr().err


def test_lazy_distance_falls_like_lambda_to_the_minus_2():
    """sup_τ ‖z(τ) − z_lin(τ)‖ (τ = |λ|t ≤ 2, n = 2) against λ = 16, 32, 64: fitted slope −2 ±
    0.1. The expansion K_λ = |λ|G + (zzᵀG + Gzᵀz)/|λ| + O(|λ|⁻³) makes the distance
    c₂λ⁻² (1 + O(‖z‖²λ⁻²)): with ‖z‖ ≲ 1.5 the correction moves the slope by ≲ 0.05 at
    λ ≥ 16 (the study measures −1.97 and −1.99 there at n = 3). The linearization is the
    closed form e^{−Mτ} of `lazy_rich.linearized` (eigendecomposition), independent of the
    flow's solver; the flow's tolerance (1e-11) is far below the smallest distance (~1e-4)."""
    z0, Y = lr.problem(2, 1.0, 0)
    lambdas = [16.0, 32.0, 64.0]
    rows, _ = lr.measure(z0, Y, lambdas, np.linspace(0.0, 2.0, 9), dict(rtol=1e-11, atol=1e-13))
    d = [r["distance"] for r in rows]
    slope = np.polyfit(np.log(lambdas), np.log(d), 1)[0]
    assert abs(slope + 2) < 0.1, (slope, d)
    assert all(r["failed"] is None for r in rows)
    # and the kernel moves less as λ grows (lazy): movement ~ ‖z‖²/λ²
    m = [r["kernel_movement"] for r in rows]
    assert m[0] > m[1] > m[2]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--lambdas", "4"], "--lambdas"),
        (["--lambdas", "-1", "2"], "--lambdas"),
        (["--lambdas", "2", "2"], "--lambdas"),
        (["--width", "0"], "--width"),
        (["--out", "/proc/forbidden"], "--out"),
    ],
)
def test_lazy_rich_refuses_bad_flags_naming_them(flags, named, capsys):
    with pytest.raises(SystemExit):
        lr.parse_args(flags)
    assert named in capsys.readouterr().err
