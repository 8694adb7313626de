"""`node_flow.log_polar_flow`, the balanced intrinsic flow in log-polar coordinates z = Q e^S,
and the Razin & Cohen (2020) setting it was built for (issue 14, item 4).

Independent checks: the vector field against `kernels.balanced` through the derivative of
z = Q expm(S) (a matrix exponential, no eigendecomposition), the whole flow against
`intrinsic_flow` where the latter is accurate, the scalar laws against Saxe's closed form and a
quadrature, and the invariants (sign of det, rank) where integrating z crosses det = 0."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import node_flow as nf
from node_flow._log_polar import _LogPolarField


class Masked(eqx.Module):
    """ℓ(z) = ½ Σ mask (z − Y)² / Σ mask: the whitened square loss (mask = 1) and the
    Razin–Cohen completion (three observed entries) in one class, so that one compilation
    of the flow serves both."""

    mask: jax.Array
    target: jax.Array

    def __call__(self, z):
        return 0.5 * jnp.sum(self.mask * (z - self.target) ** 2) / jnp.sum(self.mask)


RC_MASK = jnp.array([[0.0, 1.0], [1.0, 1.0]])
RC_TARGET = jnp.array([[0.0, 1.0], [1.0, 0.0]])
RC_Z0 = jnp.array([[1e-2, 3e-3], [-2e-3, 1e-2]])  # the start, det z0 > 0


def _random(key, n, scale=1.0):
    return scale * jax.random.normal(key, (n, n))


def _orthogonal(key, n):
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    return q * jnp.sign(jnp.diagonal(r))[None, :]


@eqx.filter_jit
def _field_velocity(z, loss, depth):
    """ż of the log-polar field at z, mapped back through z = Q expm(S) by a JVP: the
    matrix exponential (Padé) is independent of the field's eigendecomposition."""
    n = z.shape[0]
    lp = nf.LogPolar.from_matrix(z)
    y = jnp.concatenate([lp.Q.ravel(), lp.S.ravel()])
    dy = _LogPolarField(loss, depth, n, 1.0)(y)[0]
    to_z = lambda y: y[: n * n].reshape(n, n) @ jax.scipy.linalg.expm(y[n * n :].reshape(n, n))
    return jax.jvp(to_z, (y,), (dy,))[1]


def _field_cases():
    """(z, G-generating loss) pairs: generic, repeated singular values (c·orthogonal, where the
    SVD coordinates would divide by zero), and nearly rank-deficient (σ_min = 1e-12 σ_max)."""
    keys = jax.random.split(jax.random.key(0), 12)
    cases = []
    for n in (2, 3):
        cases.append(_random(keys[n], n))
        cases.append(0.3 * _orthogonal(keys[n + 3], n) * jnp.array([-1.0] + [1.0] * (n - 1)))
        U, V = _orthogonal(keys[n + 6], n), _orthogonal(keys[n + 9], n)
        s = jnp.array([2.0] + [0.5] * (n - 2) + [1e-12])
        cases.append((U * s) @ V.T)
    return cases


@pytest.mark.parametrize("depth", [2] + [pytest.param(d, marks=pytest.mark.slow) for d in (3, 5)])
def test_log_polar_field_maps_to_the_balanced_kernel_velocity(depth):
    """d/dt [Q expm(S)] along the field equals −K_N(z)[∇ℓ] of `kernels.balanced`, for
    generic, repeated-singular-value and nearly singular z. Both sides are computed to
    rounding (O(10) flops on entries of size ≤ |z|²|G|), so 1e-12 relative to the largest
    entry is a rounding margin; a sign or a factor error in a rotation rate is O(1)."""
    for z in _field_cases():
        n = z.shape[0]
        Y = jnp.arange(n * n, dtype=z.dtype).reshape(n, n) / n - 1.0
        loss = Masked(jnp.ones((n, n)), Y)
        got = _field_velocity(z, loss, depth)
        want = -nf.kernels.balanced(z, jax.grad(loss)(z), depth)
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * scale)


def test_log_polar_field_rates_stay_bounded_as_a_singular_value_vanishes():
    """σ_min ≪ σ_max: every rate stays finite, and the rate of ρ_min = ln σ_min is the law
    −N σ^{1−2/N} (RᵀGR)_mm (Q = I): at depth 2 the bounded −2 (RᵀGR)_mm, at depth 3
    −3 e^{-20} (RᵀGR)_mm (ρ_min = −60). Beyond the floor (ρ_max − ρ_min > 40N, here
    ρ_min = −700) it is switched off. Tolerance 1e-12 absolute (1e-9 relative to the
    depth-2 rate): the projection rounds entries of size |ρ| ≤ 700, ~1e-13."""
    n = 2
    loss = Masked(RC_MASK, RC_TARGET)
    R = _orthogonal(jax.random.key(3), n)
    z = jnp.exp(1.0) * jnp.outer(R[:, 0], R[:, 0])  # σ_min ≤ e^{-60}: below rounding in z
    H = float(R[:, 1] @ jax.grad(loss)(z) @ R[:, 1])
    law3 = -3 * np.exp(-60.0 / 3) * H
    for rho_min, depth, law in ((-60.0, 2, -2 * H), (-60.0, 3, law3), (-700.0, 2, 0.0)):
        S = (R * jnp.array([1.0, rho_min])) @ R.T
        y = jnp.concatenate([jnp.eye(n).ravel(), S.ravel()])
        dy = _LogPolarField(loss, depth, n, 1.0)(y)[0]
        assert bool(jnp.all(jnp.isfinite(dy)))
        dS = dy[n * n :].reshape(n, n)
        rho_min_rate = float(R[:, 1] @ dS @ R[:, 1])
        assert abs(rho_min_rate - law) < 1e-9 * max(1e-3, abs(law))
    assert abs(H) > 1e-3  # the depth-2 law is a real rate, not a zero


# One compilation of the flow (n = 2, depth 2, Tsit5, 9 save times) serves the next two tests.
_TS = jnp.linspace(0.0, 4.0, 9)
_TOL = dict(rtol=1e-11, atol=1e-13, max_steps=20_000)


def test_two_layer_modes_follow_saxe_closed_form_from_a_repeated_start():
    """z0 = 1e-2 I (a balanced start with repeated singular values, singular for the SVD
    coordinates), whitened target diag(2, 0.5): each diagonal entry follows
    u' = 2u(s − u), u(t) = s e^{2st}/(e^{2st} − 1 + s/u0) (Saxe et al. 2014, eq. 12) for
    ½‖z − Y‖² (`Masked` averages over the 4 entries: time_scale = 4 restores the sum). The
    solve's local error is 1e-11 relative over ≲ 20 time constants: 1e-9 is a margin."""
    s = jnp.array([2.0, 0.5])
    loss = Masked(jnp.ones((2, 2)), jnp.diag(s))
    sol = nf.log_polar_flow(1e-2 * jnp.eye(2), loss, 2, _TS[-1], ts=_TS, time_scale=4.0, **_TOL)
    t = _TS[:, None]
    closed = s * jnp.exp(2 * s * t) / (jnp.exp(2 * s * t) - 1 + s / 1e-2)
    np.testing.assert_allclose(jnp.diagonal(sol.zs, axis1=1, axis2=2), closed, rtol=1e-9)
    np.testing.assert_allclose(sol.zs[:, 0, 1], 0.0, atol=1e-12)


def test_razin_cohen_w11_grows_with_det_positive_and_effective_rank_falls():
    """The Razin–Cohen completion at depth 2 from the issue's start: the unobserved |w₁₁|
    grows while the loss falls, det z stays positive (computed from z itself, and as det Q),
    and the effective rank falls toward 1. Independent bound: with det z > 0 and
    w₂₂ > 0, w₁₁ > w₁₂w₂₁/w₂₂, and w₂₂ ≤ √(6ℓ), so w₁₁ is forced up as ℓ → 0."""
    loss = Masked(RC_MASK, RC_TARGET)
    sol = nf.log_polar_flow(RC_Z0, loss, 2, _TS[-1] * 4, ts=_TS * 4, time_scale=1.0, **_TOL)
    z, losses = np.asarray(sol.zs), np.asarray(sol.losses)
    det = np.linalg.det(z)
    assert np.all(det > 0) and np.all(np.asarray(sol.models.det_sign()) == 1)
    w11 = z[:, 0, 0]
    assert np.all(np.diff(w11[2:]) > 0) and w11[-1] > 1.0
    assert np.all(np.diff(losses) < 0) and losses[-1] < 0.15 * losses[0]
    late = slice(4, None)
    bound = z[late, 0, 1] * z[late, 1, 0] / np.sqrt(6 * losses[late])
    assert np.all(w11[late] > bound)
    erank = np.asarray(nf.effective_rank(sol.zs))
    assert erank[-1] < 1.1 < erank[0]


def test_log_polar_flow_refuses_bad_input_before_solving():
    loss = Masked(jnp.ones((2, 2)), jnp.eye(2))
    with pytest.raises(ValueError, match="log_polar_flow: `z0` is singular"):
        nf.log_polar_flow(jnp.array([[1.0, 2.0], [2.0, 4.0]]), loss, 2, 1.0)
    with pytest.raises(ValueError, match="log_polar_flow: `depth` must be an integer ≥ 2"):
        nf.log_polar_flow(jnp.eye(2), loss, 1, 1.0)
    with pytest.raises(ValueError, match="log_polar_flow: `z0` must be a square matrix"):
        nf.log_polar_flow(jnp.ones((2, 3)), loss, 2, 1.0)
    with pytest.raises(ValueError, match="log_polar_flow"):
        nf.log_polar_flow(jnp.eye(2), loss, 2, 1.0, rtol=2.0)


# --- heavier checks: `make test-slow` --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("n, depth", [(2, 2), (2, 3), (3, 2), (3, 3)])
def test_log_polar_flow_agrees_with_intrinsic_flow_on_well_conditioned_runs(n, depth):
    """Three seeds (vmapped), t ∈ [0, 1], z0 Gaussian (well conditioned), a nonconvex loss:
    both flows solve the same ODE at rtol 1e-11 in different coordinates, so they differ by
    their global errors (≲ 1e-10 over a unit time with O(1) Lipschitz constants): 1e-8."""
    keys = jax.random.split(jax.random.key(10 * n + depth), 3)
    z0s = jax.vmap(lambda k: _random(k, n) + 2 * jnp.eye(n))(keys)
    Y = _random(jax.random.key(99), n)
    loss = lambda z: 0.5 * jnp.sum((z - Y) ** 2) + 0.05 * jnp.sum(z**4)
    ts = jnp.linspace(0.0, 1.0, 5)
    kernel = lambda z, G: nf.kernels.balanced(z, G, depth)

    def both(z0):
        a = nf.intrinsic_flow(z0, loss, kernel, 1.0, ts=ts, rtol=1e-11, atol=1e-13)
        b = nf.log_polar_flow(z0, loss, depth, 1.0, ts=ts, rtol=1e-11, atol=1e-13)
        return a.zs, b.zs, b.models.orthogonality_drift()

    za, zb, drift = jax.vmap(both)(z0s)
    np.testing.assert_allclose(zb, za, rtol=0, atol=1e-8 * float(jnp.max(jnp.abs(za))))
    assert float(jnp.max(drift)) < 1e-10


@pytest.mark.slow
def test_depth_3_modes_follow_the_deep_law_by_quadrature():
    """σ' = 3σ^{4/3}(s − σ) (Saxe et al. 2014, eq. 15 with N = 3) from a diagonal start: the
    time to reach each saved σ(t_k), by composite Gauss–Legendre quadrature of
    dt = dσ/(3σ^{4/3}(s − σ)) in x = ln σ (converged to ~1e-14), equals t_k to 1e-8 (the
    solve's rtol is 1e-11; the time of a measured σ amplifies its error by σ/(tσ') ≲ 10)."""
    s, z0 = np.array([1.0, 0.5]), np.array([1e-2, 3e-2])
    ts = jnp.linspace(0.0, 4.0, 5)
    sol = nf.log_polar_flow(
        jnp.diag(jnp.asarray(z0)),
        Masked(jnp.ones((2, 2)), jnp.diag(jnp.asarray(s))),
        3,
        ts[-1],
        ts=ts,
        time_scale=4.0,
        rtol=1e-11,
        atol=1e-13,
    )
    u = np.asarray(jnp.diagonal(sol.zs, axis1=1, axis2=2))
    # Before convergence (σ ≤ 0.95 s): the integrand's 1/(s − σ) stays resolved.
    assert np.all(u[-1] < 0.95 * s) and np.all(u[-1] > 2 * z0)
    x, w = np.polynomial.legendre.leggauss(40)
    for a in range(2):
        for k in range(1, len(ts)):
            lo, hi = np.log(z0[a]), np.log(u[k, a])
            edges = np.linspace(lo, hi, 65)
            total = 0.0
            for p, q in zip(edges[:-1], edges[1:]):
                sig = np.exp(0.5 * (q - p) * x + 0.5 * (p + q))
                total += np.sum(0.5 * (q - p) * w * sig / (3 * sig ** (4 / 3) * (s[a] - sig)))
            np.testing.assert_allclose(total, float(ts[k]), rtol=1e-8)


@pytest.mark.slow
def test_razin_cohen_depth_3_keeps_det_positive_to_small_loss_with_an_implicit_solver():
    """Depth 3 to t = 1e5 with Kvaerno5 (stiff: the fast rate grows like 3σ_max^{4/3}): det
    z > 0 throughout, the loss below 1e-4, |w₁₁| beyond 50 and growing, erank → 1."""
    ts = jnp.geomspace(1.0, 1e5, 6)
    solver = diffrax.Kvaerno5(root_finder=diffrax.VeryChord(rtol=1e-3, atol=1e-6))
    sol = nf.log_polar_flow(
        RC_Z0, Masked(RC_MASK, RC_TARGET), 3, 1e5, ts=ts, rtol=1e-8, atol=1e-10, solver=solver
    )
    z = np.asarray(sol.zs)
    assert np.all(np.linalg.det(z) > 0) and np.all(np.asarray(sol.models.det_sign()) == 1)
    assert np.all(np.diff(z[:, 0, 0]) > 0) and z[-1, 0, 0] > 50
    assert float(sol.losses[-1]) < 1e-4
    assert float(nf.effective_rank(sol.zs[-1])) < 1.05


# --- the study (`experiments/norms_vs_rank.py`): flags and its exact effective rank ------------


@pytest.fixture(scope="module")
def study():
    import importlib
    import sys
    from pathlib import Path

    path = str(Path(__file__).resolve().parents[1] / "experiments")
    sys.path.insert(0, path)
    try:
        yield importlib.import_module("norms_vs_rank")
    finally:
        sys.path.remove(path)


@pytest.mark.parametrize(
    "flags, flag, says",
    [
        (["--z0", "1", "0", "0", "-1"], "--z0", "must be > 0"),
        (["--z0", "1", "0", "0"], "--z0", "expected 4"),
        (["--depths", "1"], "--depths", "integer ≥ 2"),
        (["--depths", "2", "2"], "--depths", "repeated"),
        (["--depths", "2", "--check-depth", "3"], "--check-depth", "one of --depths"),
        (["--target-loss", "0"], "--target-loss", "> 0"),
        (["--rtol", "1"], "--rtol", "(0, 1)"),
        (["--check-t", "1e10"], "--check-t", "below --t-max"),
    ],
)
def test_study_refuses_a_bad_flag_naming_it(study, tmp_path, capsys, flags, flag, says):
    with pytest.raises(SystemExit) as exit_info:
        study.parse_args([*flags, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"argument {flag}:" in message and says in message


def test_study_erank_minus_one_matches_effective_rank_and_resolves_below_rounding(study):
    """erank − 1 from ln σ (log-sum-exp, log1p, expm1) against `nf.effective_rank` (an SVD)
    where the SVD resolves it (1e-13: rounding of erank ≈ 1–3), and against its first-order
    expansion Σ_{a>1} (σ_a/σ_1)(1 − ln(σ_a/σ_1)) at σ_2/σ_1 = e^{-80}, where erank − 1 ≈ 8e-34
    is far below what the SVD of z sees (relative 1e-6: the next order is O(e^{-80} · 80²))."""
    log_s = np.array([[0.3, -0.2, -1.0], [2.0, -5.0, -9.0], [1.0, 0.0, 0.5]])
    z = jax.vmap(lambda s: jnp.diag(jnp.exp(s)))(jnp.asarray(log_s))
    np.testing.assert_allclose(
        1 + study.erank_minus_one(log_s), nf.effective_rank(z), rtol=0, atol=1e-13
    )
    tiny = study.erank_minus_one(np.array([[0.0, -80.0]]))[0]
    r = np.exp(-80.0)
    np.testing.assert_allclose(tiny, r * (1 + 80.0), rtol=1e-6)
