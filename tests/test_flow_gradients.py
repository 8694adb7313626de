"""Differentiable flows (issue 11): `jax.grad` through `gradient_flow` and `intrinsic_flow`
against central finite differences of the flows themselves.

Tolerance: the solves use rtol = atol = 1e-12, so the computed z(t1) differs from the
exact flow by O(1e-11); central differences with h = 1e-4 have truncation error
O(h²·f''') ≈ 1e-8 and solver noise O(1e-11 / h) = 1e-7 at most (step sizes change with
the input). The reverse-mode gradient (RecursiveCheckpointAdjoint) is the exact derivative
of the computed solution, itself O(tol) from the exact derivative. Hence 1e-6 relative.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.flatten_util import ravel_pytree

import node_flow as nf

from .helpers import quartic_loss


TOL = dict(rtol=1e-12, atol=1e-12)
H = 1e-4
T1 = 0.5


def _central(f, x, v):
    return (f(x + H * v) - f(x - H * v)) / (2 * H)


def _assert_close(ad, fd):
    assert abs(float(ad) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_gradient_of_the_parameter_flow_matches_finite_differences(seed):
    """d/dθ0, d/dY (data inside the loss) and d/dτ of ⟨W, z(t1)⟩ + ℓ(z(t1)), depth 3."""
    k = jax.random.split(jax.random.key(seed), 5)
    net = nf.init.gaussian(k[0], (2, 3, 2, 2), std=0.8)
    X, Y = jax.random.normal(k[1], (2, 4)), jax.random.normal(k[2], (2, 4))
    W = jax.random.normal(k[3], (2, 2))
    flat, unravel = ravel_pytree(net)

    def objective(flat, Y, tau):
        sol = nf.gradient_flow(
            unravel(flat), nf.LeastSquares(X, Y), T1, time_scale=tau, save_models=False, **TOL
        )
        return jnp.sum(W * sol.zs[-1]) + sol.losses[-1]

    f = jax.jit(objective)
    g_flat, g_Y, g_tau = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(flat, Y, 1.0)
    v = jax.random.normal(k[4], flat.shape)
    _assert_close(g_flat @ v, _central(lambda x: f(x, Y, 1.0), flat, v))
    vY = jnp.ones_like(Y)
    _assert_close(jnp.sum(g_Y * vY), _central(lambda y: f(flat, y, 1.0), Y, vY))
    _assert_close(g_tau, _central(lambda t: f(flat, Y, t), 1.0, 1.0))


# Both seeds under `slow` (14 s each): `make test` keeps the parameter-flow gradient check.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_of_the_intrinsic_flow_matches_finite_differences(seed):
    """d/dz0 of a scalar of z(t1) for the balanced depth-3 kernel and the quartic loss."""
    k = jax.random.split(jax.random.key(10 + seed), 3)
    z0 = nf.init.balanced(k[0], (2, 2, 2, 2), scale=0.8).lift()
    W = jax.random.normal(k[1], (2, 2))
    kernel = lambda z, G: nf.kernels.balanced(z, G, 3)

    def objective(z0):
        sol = nf.intrinsic_flow(z0, quartic_loss, kernel, T1, **TOL)
        return jnp.sum(W * sol.zs[-1])

    g = jax.jit(jax.grad(objective))(z0)
    v = jax.random.normal(k[2], z0.shape)
    _assert_close(jnp.sum(g * v), _central(jax.jit(objective), z0, v))
