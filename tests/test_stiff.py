"""`node_flow.stiff_solver`: a matrix-free Newton–Krylov ESDIRK solver for stiff flows,
checked against Saxe et al.'s closed form (REFERENCES.md) on a stiff problem."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
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
