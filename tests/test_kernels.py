"""Intrinsic kernels against the metric of the factors and published closed forms."""

import jax
import jax.numpy as jnp
import pytest

import node_flow as nf

from .helpers import (
    arora_kernel,
    max_abs,
    neural_ode_kernel_quadrature,
    random_orthogonal,
    rel_err,
    two_layer_kernel,
)


def _draw(seed, n):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (n, n)), jax.random.normal(k2, (n, n))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depth, n", [(2, 3), (3, 4), (5, 2), (8, 3), (4, 1)])
def test_relaxed_balanced_kernel_equals_metric_of_factors(seed, depth, n):
    """K_L(z)[G] from z alone equals ∂φ ∂φᵀ[G] computed by jvp/vjp from the factors of a
    random relaxed balanced network (mixed-sign λ). Both are O(1) sums of products of
    well-conditioned factors; the root solve is accurate to rounding, so 1e-10 relative."""
    key = jax.random.key(100 * seed + depth)
    lam = jax.random.uniform(key, (depth - 1,), minval=-1.5, maxval=1.5)
    net = nf.init.relaxed_balanced(jax.random.key(seed), (n,) * (depth + 1), lam)
    _, G = _draw(seed, n)
    expected = nf.metric(net, G)
    assert rel_err(nf.kernels.relaxed_balanced(net.lift(), G, lam), expected) <= 1e-10


@pytest.mark.parametrize("depth", [1, 2, 3, 6, 11])
def test_balanced_kernel_equals_arora_formula(depth):
    """Arora et al. (2018), with fractional powers by eigh (an independent computation)."""
    z, G = _draw(depth, 4)
    expected = arora_kernel(z, G, depth)
    assert rel_err(nf.kernels.balanced(z, G, depth), expected) <= 1e-10


@pytest.mark.parametrize("lam", [-1.3, -0.2, 0.0, 0.4, 2.0])
def test_two_layer_kernel_equals_square_root_closed_form(lam):
    """L = 2: K(z)[G] = (λ/2 + (zzᵀ + λ²/4)^½) G + G (−λ/2 + (zᵀz + λ²/4)^½)."""
    z, G = _draw(7, 3)
    got = nf.kernels.relaxed_balanced(z, G, jnp.array([lam]))
    assert rel_err(got, two_layer_kernel(z, G, lam)) <= 1e-10


def _geometric_sum_decimal(s2, depth):
    """W_kl = (a_k^L − a_l^L)/(a_k − a_l), a = (s²)^(1/L), in 50-digit decimal arithmetic."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 50
        a = [Decimal(float(x)) ** (Decimal(1) / depth) if x > 0 else Decimal(0) for x in s2]
        W = [
            [
                (1 if depth == 1 else depth * ak ** (depth - 1))  # Σ_j a^(L−1), 0⁰ = 1
                if ak == al
                else (ak**depth - al**depth) / (ak - al)
                for al in a
            ]
            for ak in a
        ]
        return jnp.asarray([[float(w) for w in row] for row in W])


@pytest.mark.parametrize("depth", [1, 2, 3, 64, 1024, 4096])
@pytest.mark.parametrize("case", ["distinct", "nearly equal", "equal", "one zero", "two zero"])
def test_balanced_weights_closed_form_equals_exact_geometric_sum(depth, case):
    """The O(n²) closed form L e^{(1−1/L)m} sinhc(δ)/sinhc(δ/L) against the geometric sum in
    50-digit arithmetic. Every factor is computed to a few ulps (|m|, |δ| ≲ 5 here), so
    1e-14 relative; the O(nL) prefix-product form would only reach ~Lε (3e-13 at L = 4096)."""
    from node_flow.kernels._linear import balanced_weights

    s2 = [0.3, 1.7, 2.9, 0.05, 4.0]
    if case == "nearly equal":
        s2[1] = s2[0] * (1 + 1e-9)
    if case == "equal":
        s2[1] = s2[0]
    if case in ("one zero", "two zero"):
        s2[3] = 0.0
    if case == "two zero":
        s2[4] = 0.0
    expected = _geometric_sum_decimal(s2, depth)
    got = balanced_weights(jnp.asarray(s2), depth)
    scale = jnp.where(expected == 0, 1.0, jnp.abs(expected))
    assert float(jnp.max(jnp.abs(got - expected) / scale)) <= 1e-14


def test_relaxed_kernel_at_zero_lambda_is_balanced_kernel():
    z, G = _draw(3, 5)
    got = nf.kernels.relaxed_balanced(z, G, jnp.zeros(4))
    assert rel_err(got, nf.kernels.balanced(z, G, 5)) <= 1e-12


def test_relaxed_kernel_root_solve_at_extreme_imbalance():
    """Deep (L = 64), strongly mixed λ: the kernel still matches the metric of the factors."""
    lam = 0.5 * jnp.sin(jnp.arange(63.0))
    net = nf.init.relaxed_balanced(jax.random.key(5), (3,) * 65, lam, scale=1.0)
    _, G = _draw(11, 3)
    assert rel_err(nf.kernels.relaxed_balanced(net.lift(), G, lam), nf.metric(net, G)) <= 1e-9


def test_kernels_work_under_jit_and_vmap():
    zs = jax.random.normal(jax.random.key(0), (5, 3, 3))
    Gs = jax.random.normal(jax.random.key(1), (5, 3, 3))
    lams = jax.random.normal(jax.random.key(2), (5, 2))
    batched = jax.jit(jax.vmap(nf.kernels.relaxed_balanced))(zs, Gs, lams)
    for i in range(5):
        assert max_abs(batched[i] - nf.kernels.relaxed_balanced(zs[i], Gs[i], lams[i])) < 1e-12


def _with_singular_values(seed, s):
    kx, ky = jax.random.split(jax.random.key(seed))
    n = len(s)
    X, Y = random_orthogonal(kx, n), random_orthogonal(ky, n)
    return X @ jnp.diag(jnp.asarray(s)) @ Y.T


def test_neural_ode_kernel_diagonal_weights_are_squared_singular_values():
    """W_kk = s_k²: for G = x_k y_kᵀ the kernel returns s_k² G."""
    s = jnp.array([2.0, 1.0, 0.5])
    kx, ky = jax.random.split(jax.random.key(3))
    X, Y = random_orthogonal(kx, 3), random_orthogonal(ky, 3)
    z = X @ jnp.diag(s) @ Y.T
    for k in range(3):
        G = jnp.outer(X[:, k], Y[:, k])
        assert max_abs(nf.kernels.neural_ode(z, G) - s[k] ** 2 * G) < 1e-13


def test_neural_ode_kernel_weights_are_symmetric_log_means():
    """For G = x_k y_lᵀ: K[G] = W_kl G with W_kl = W_lk = (s_k² − s_l²)/ln(s_k²/s_l²)."""
    s = jnp.array([3.0, 1.2, 0.4])
    kx, ky = jax.random.split(jax.random.key(4))
    X, Y = random_orthogonal(kx, 3), random_orthogonal(ky, 3)
    z = X @ jnp.diag(s) @ Y.T
    for k in range(3):
        for l in range(3):
            if k == l:
                continue
            w = (s[k] ** 2 - s[l] ** 2) / (jnp.log(s[k] ** 2) - jnp.log(s[l] ** 2))
            for a, b in ((k, l), (l, k)):
                G = jnp.outer(X[:, a], Y[:, b])
                assert max_abs(nf.kernels.neural_ode(z, G) - w * G) < 1e-13


@pytest.mark.parametrize("seed", range(4))
def test_neural_ode_kernel_equals_quadrature(seed):
    """Closed form against 200-point Gauss–Legendre quadrature of ∫(zzᵀ)^{1-s}G(zᵀz)^s ds
    (integrand analytic in s: quadrature error far below 1e-12)."""
    z, G = _draw(seed, 4)
    z = z + 3 * jnp.eye(4)  # keep the singular values O(1) and away from 0
    assert rel_err(nf.kernels.neural_ode(z, G), neural_ode_kernel_quadrature(z, G)) <= 1e-11


@pytest.mark.parametrize("gap", [0.0, 1e-14, 1e-9, 1e-5, 1e-3, 1e-2])
def test_neural_ode_kernel_at_coinciding_singular_values(gap):
    """No 0/0 at coinciding or nearly coinciding singular values: the kernel is finite,
    continuous, and matches the quadrature oracle to full relative accuracy."""
    z = _with_singular_values(9, [1.5, 1.5 * (1 + gap), 0.7])
    _, G = _draw(2, 3)
    got = nf.kernels.neural_ode(z, G)
    assert bool(jnp.all(jnp.isfinite(got)))
    assert rel_err(got, neural_ode_kernel_quadrature(z, G)) <= 1e-11


def test_neural_ode_kernel_at_identity_is_identity_map():
    _, G = _draw(1, 3)
    assert max_abs(nf.kernels.neural_ode(jnp.eye(3), G) - G) < 1e-14


def test_neural_ode_kernel_is_the_depth_limit_of_the_balanced_kernel():
    """(1/L) K_L → K_∞ at first order: the error times L tends to a constant."""
    z, G = _draw(5, 3)
    z = z + 3 * jnp.eye(3)
    limit = nf.kernels.neural_ode(z, G)
    errs = [rel_err(nf.kernels.balanced(z, G, L) / L, limit) for L in (64, 128, 256)]
    assert 1.9 < errs[0] / errs[1] < 2.1 and 1.9 < errs[1] / errs[2] < 2.1


def test_kernel_bad_inputs():
    with pytest.raises(ValueError, match="z must be a square matrix"):
        nf.kernels.neural_ode(jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="G must have the shape of z"):
        nf.kernels.balanced(jnp.eye(3), jnp.ones((2, 2)), 2)
    with pytest.raises(ValueError, match="depth"):
        nf.kernels.balanced(jnp.eye(3), jnp.eye(3), 0)
    with pytest.raises(ValueError, match="1-D array"):
        nf.kernels.relaxed_balanced(jnp.eye(3), jnp.eye(3), jnp.ones((2, 2)))
    singular = jnp.diag(jnp.array([1.0, 0.0, 2.0]))
    with pytest.raises(Exception, match="z is singular"):
        nf.kernels.neural_ode(singular, jnp.eye(3))
