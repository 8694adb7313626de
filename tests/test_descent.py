"""`gradient_descent` (issue 13): against a hand-written step, the exact per-step change
of the conservation laws of a deep linear network, and first-order convergence to the
gradient flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import node_flow as nf

from .helpers import fit_slope, max_abs


def _problem(seed=0, widths=(2, 3, 2, 2)):
    k = jax.random.split(jax.random.key(seed), 3)
    net = nf.init.gaussian(k[0], widths, std=0.7)
    X, Y = jax.random.normal(k[1], (widths[0], 4)), jax.random.normal(k[2], (widths[-1], 4))
    return net, nf.LeastSquares(X, Y)


def test_steps_equal_hand_written_steps_and_conservation_identity():
    """Two steps of θ ← θ − ητ∇L (τ = 2) written with jax.grad of the product directly;
    then ΔC_j = (ητ)²(G_{j+1}ᵀG_{j+1} − G_jG_jᵀ) (REFERENCES, exact for gradient descent
    on a deep linear network) to 1e-12 relative (rounding of O(1) products)."""
    net, loss = _problem()
    eta, tau = 0.05, 2.0
    sol = nf.gradient_descent(net, loss, eta, 2, time_scale=tau)
    L = lambda ws: loss(jnp.linalg.multi_dot(ws[::-1]) if len(ws) > 1 else ws[0])
    ws = list(net.weights)
    for k in range(2):
        G = jax.grad(L)(ws)
        new = [w - eta * tau * g for w, g in zip(ws, G)]
        got = [w[k + 1] for w in sol.models.weights]
        assert all(max_abs(a - b) <= 1e-14 for a, b in zip(got, new))
        for j in range(len(ws) - 1):
            C = lambda U: U[j + 1].T @ U[j + 1] - U[j] @ U[j].T
            change = C(new) - C(ws)
            expected = (eta * tau) ** 2 * (G[j + 1].T @ G[j + 1] - G[j] @ G[j].T)
            assert max_abs(change - expected) <= 1e-12 * max_abs(expected)
        ws = new
    assert np.allclose(np.asarray(sol.ts), [0.0, 0.1, 0.2]) and list(sol.steps) == [0, 1, 2]


@pytest.mark.slow  # make test time: 15 s (a descent per step size and a tight flow)
def test_descent_converges_to_the_flow_at_first_order():
    """max_k |z_GD(kη) − z_GF(kη)| over t ∈ [0, 1] for η = 0.1 … 0.0125: the fitted
    log–log slope is 1 (explicit Euler) within 0.1; the flow is solved at 1e-12."""
    net, loss = _problem(1)
    etas = [0.1, 0.05, 0.025, 0.0125]
    errors = []
    for eta in etas:
        n = int(round(1.0 / eta))
        gd = nf.gradient_descent(net, loss, eta, n, save_models=False)
        gf = nf.gradient_flow(net, loss, 1.0, ts=gd.ts, rtol=1e-12, atol=1e-12)
        errors.append(max_abs(gd.zs - gf.zs))
    slope, _ = fit_slope(etas, errors)
    assert abs(slope - 1.0) <= 0.1


def test_divergence_is_named_with_its_step():
    """ℓ = ½||z − 1||² on a 1×1 one-layer network: θ ← θ − η(θ − 1) diverges for η > 2
    (|1 − η| > 1); with η = 3 the loss passes blowup = 1e4 ·max(1, ℓ0) at a known step."""
    net = nf.LinearNetwork((jnp.array([[0.0]]),))
    loss = lambda z: 0.5 * jnp.sum((z - 1.0) ** 2)
    sol = nf.gradient_descent(net, loss, 3.0, 50, blowup=1e4, throw=False)
    # θ_k − 1 = (−2)^k (θ0 − 1): ℓ_k = ½·4^k exceeds 1e4·max(1, ℓ0) = 1e4 first at k = 8.
    assert sol.result == nf.RESULTS.diverged and int(sol.stats["num_steps"]) == 8
    with pytest.raises(nf.FlowError, match="diverged at step 8"):
        nf.gradient_descent(net, loss, 3.0, 50, blowup=1e4)
    with pytest.raises(ValueError, match="`lr` must be positive"):
        nf.gradient_descent(net, loss, -1.0, 5)
