"""`node_flow.stiff_solver`: a matrix-free Newton–Krylov ESDIRK solver for stiff flows,
checked against Saxe et al.'s closed form (REFERENCES.md) on a stiff problem."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

import node_flow as nf


# Diagonal target: four decoupled modes with rates 2s from 2e2 down to 2e-2, a stiffness
# ratio of 1e4 once the fast mode is learned (t ≳ 0.05); the slow mode is learned near
# t = ln(s/u0)/(2s) ≈ 115 and has converged by T.
S = np.array([100.0, 10.0, 1.0, 0.01])
U0, T = 1e-3, 1e3
TS = np.array([0.0, 0.01, 0.1, 1.0, 10.0, 100.0, 200.0, T])


def saxe(t):
    """Saxe et al. (2014) eq. 12, depth 2: u(t) = s e^{2st} / (e^{2st} − 1 + s/u0), written
    with e^{−2st} so that it does not overflow."""
    e = np.exp(-2.0 * S[None, :] * t[:, None])
    return S / (1.0 - e + (S / U0) * e)


def _solve(solver, max_steps):
    loss = lambda z: 0.5 * jnp.sum((z - jnp.diag(S)) ** 2)
    kernel = jax.tree_util.Partial(nf.kernels.balanced, depth=2)
    return nf.intrinsic_flow(
        U0 * jnp.eye(4), loss, kernel, T, ts=TS, rtol=1e-8, atol=1e-12,
        solver=solver, max_steps=max_steps, throw=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stiff_solution():
    return _solve(nf.stiff_solver(), 2_000)


def test_stiff_solver_follows_saxe_closed_form_through_a_stiff_flow(stiff_solution):
    sol = stiff_solution
    assert sol.result == nf.RESULTS.successful
    modes = np.diagonal(np.asarray(sol.zs), axis1=1, axis2=2)
    # The controller's rtol 1e-8 bounds the local error; the global error of the
    # learning transients (a sigmoid in log time, 1e2 × amplified from u0) stays below
    # 1e-5 relative to each mode's target s. A wrong Jacobian or a solver that skipped
    # a transient misses a whole mode (error O(1)).
    err = np.abs(modes - saxe(TS)) / S
    assert err.max() < 1e-5, err.max()
    offdiag = np.asarray(sol.zs) * (1.0 - np.eye(4))
    assert np.abs(offdiag).max() < 1e-12
    # L-stability: the mean step (≥ T/2000 = 0.5) is ≥ 28× Tsit5's stability bound
    # 3.5/200 for the learned fast mode (rate 2s = 200); the steps follow accuracy only.
    assert int(sol.stats["num_steps"]) < 2_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"order": 2},
        {"order": True},
        {"krylov_rtol": 0.0},
        {"krylov_rtol": 1.5},
        {"restart": 0},
        {"krylov_max_steps": 2.5},
        {"newton_max_steps": -1},
    ],
)
def test_stiff_solver_refuses_bad_arguments_naming_them(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"stiff_solver: `{name}`"):
        nf.stiff_solver(**kwargs)


def test_stiff_solver_is_a_diffrax_implicit_solver_of_the_requested_order():
    for order, cls in ((3, diffrax.Kvaerno3), (4, diffrax.Kvaerno4), (5, diffrax.Kvaerno5)):
        assert type(nf.stiff_solver(order)) is cls


def test_newton_krylov_correction_converges_when_the_residual_spans_many_magnitudes():
    """The chord iteration of `stiff_solver` on a coupled linear system $Ay = b$ whose
    right-hand side has entries from 1 down to 1e-30 (as the stage residual of a converged
    completion flow has, or the ascent appended to the state). lineax's GMRES tests its
    residual entry by entry, so a per-entry relative test can never be met on the tiny
    entries (rounding spreads ~1e-16‖b‖ into every entry): every Newton step failed and
    the 100 × 100 completion flow rejected each trial step down to `dt_min_reached`."""
    rng = np.random.default_rng(0)
    n = 40
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = jnp.asarray(Q @ np.diag(np.geomspace(1.0, 1e3, n)) @ Q.T)  # (I - hγJ): SPD, κ = 1e3
    b = jnp.asarray(10.0 ** -np.linspace(0.0, 30.0, n))
    exact = np.linalg.solve(np.asarray(A), np.asarray(b))
    chord = nf.stiff_solver().root_finder  # the Krylov solver and its settings as shipped
    tol = 1e-10 * np.abs(exact).max()
    chord = type(chord)(rtol=1e-10, atol=tol, linear_solver=chord.linear_solver)
    sol = optx.root_find(lambda y, _: A @ y - b, chord, jnp.zeros(n), max_steps=10, throw=False)
    assert sol.result == optx.RESULTS.successful
    # Each sweep solves to normwise relative residual 1e-4 (`krylov_rtol`), so the chord
    # iteration contracts by ≤ κ·1e-4 = 0.1 per sweep; it stops once the next correction
    # is predicted below 1e-2·tol (kappa), so the error is ~tol (100 tol leaves margin).
    assert np.abs(np.asarray(sol.value) - exact).max() <= 100 * tol


@pytest.mark.slow  # ~20 s: a Tsit5 reference of 33,000 steps
def test_stiff_solver_continues_a_converged_completion_flow_as_the_explicit_solver_does():
    """The workload `stiff_solver` is for, small: a 12 × 12 rank-2 completion (60 entries),
    depth 3 from 1e-3 I, run to loss 1e-6 (t*), then to 30 t*. Tsit5 needs ~33,000 steps
    for the tail (its step is bounded by the learned modes); the implicit solve must take
    a few dozen and agree with it. Both at rtol 1e-8: their global errors are ~1e-8
    relative (the tail is contracting), so 1e-6 relative in the max norm."""
    n, key = 12, jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    W = jax.random.normal(k1, (n, 2)) @ jax.random.normal(k2, (2, n))
    idx = jax.random.choice(k3, n * n, (60,), replace=False)
    loss = nf.MatrixCompletion(idx // n, idx % n, W[idx // n, idx % n], (n, n))
    kernel = jax.tree_util.Partial(nf.kernels.balanced, depth=3)
    tol = dict(rtol=1e-8, atol=1e-10, max_steps=100_000, throw=False)
    first = nf.intrinsic_flow(1e-3 * jnp.eye(n), loss, kernel, 1e7, target_loss=1e-6, **tol)
    t_star = float(first.t_final)
    ts = t_star * np.array([3.0, 10.0, 30.0])

    def tail(solver):
        sol = nf.intrinsic_flow(first.zs[-1], loss, kernel, ts[-1], t0=t_star, ts=ts,
                                solver=solver, **tol)  # fmt: skip
        assert sol.result == nf.RESULTS.successful
        return sol

    explicit, implicit = tail(None), tail(nf.stiff_solver())
    assert int(explicit.stats["num_steps"]) > 10_000  # stiff: else the test proves nothing
    assert int(implicit.stats["num_steps"]) < 200
    scale = float(jnp.max(jnp.abs(explicit.zs)))
    assert float(jnp.max(jnp.abs(implicit.zs - explicit.zs))) <= 1e-6 * scale
