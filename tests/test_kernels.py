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


# Derivatives (issue 12): the kernels are smooth wherever z is invertible (W is analytic in the
# squared singular values), including at repeated singular values, where autodiff through the
# SVD was NaN (2 I) or wrong (⟨∇φ, V⟩ = 1.79 against −3.56 at Q diag(2, 2, .5) Qᵀ).
_DERIVATIVE_POINTS = {
    "2I": ([2.0, 2.0, 2.0], True),
    "Q diag(2,2,.5) Q^T": ([2.0, 2.0, 0.5], True),
    "X diag(2,2,.5) Y^T": ([2.0, 2.0, 0.5], False),
    "gap 1e-6": ([2.0, 2.0 * (1 + 1e-6), 0.5], False),
    "gap 1e-9": ([2.0, 2.0 * (1 + 1e-9), 0.5], True),
    "generic": ([2.0, 1.3, 0.5], False),
}
_DERIVATIVE_KERNELS = {
    "balanced L=1": lambda z, G: nf.kernels.balanced(z, G, 1),
    "balanced L=2": lambda z, G: nf.kernels.balanced(z, G, 2),
    "balanced L=3": lambda z, G: nf.kernels.balanced(z, G, 3),
    "balanced L=64": lambda z, G: nf.kernels.balanced(z, G, 64),
    "relaxed λ=(.3,-.5)": lambda z, G: nf.kernels.relaxed_balanced(z, G, jnp.array([0.3, -0.5])),
    "relaxed λ=(1.5,)": lambda z, G: nf.kernels.relaxed_balanced(z, G, jnp.array([1.5])),
    "neural_ode": nf.kernels.neural_ode,
}


def _derivative_points():
    kx, ky, kg = jax.random.split(jax.random.key(21), 3)
    X, Y = random_orthogonal(kx, 3), random_orthogonal(ky, 3)
    zs = [
        X @ jnp.diag(jnp.asarray(s)) @ (X if sym else Y).T for s, sym in _DERIVATIVE_POINTS.values()
    ]
    G, H, V = jax.random.normal(kg, (3, 3, 3))
    return jnp.stack(zs), G, H, V


def _fd4(f, h):
    """Fourth-order central difference of the scalar function f at 0."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


@pytest.mark.parametrize("kernel", _DERIVATIVE_KERNELS.values(), ids=_DERIVATIVE_KERNELS.keys())
def test_kernel_gradient_and_jvp_equal_finite_differences_at_repeated_singular_values(kernel):
    """φ(z) = ⟨K(z)[G], H⟩: ⟨∇φ, V⟩ (reverse mode) and the JVP along V (forward mode) against a
    fourth-order central difference, h = 1e-3, at exactly repeated (2 I, diag(2, 2, .5), both
    with X = Y and X ≠ Y), nearly repeated (relative gaps 1e-6, 1e-9) and generic singular
    values. The difference has truncation error ~h⁴|φ⁽⁵⁾|/30 ≈ 1e-13 and rounding ≈ ε|φ|/h
    ≈ 1e-12 relative here, so 1e-8 relative separates it from the O(1) errors of autodiff
    through the SVD."""
    zs, G, H, V = _derivative_points()

    def one(z):
        phi = lambda z: jnp.sum(kernel(z, G) * H)
        grad = jnp.sum(jax.grad(phi)(z) * V)
        tangent = jax.jvp(phi, (z,), (V,))[1]
        return grad, tangent, _fd4(lambda h: phi(z + h * V), 1e-3)

    grad, tangent, fd = jax.jit(jax.vmap(one))(zs)
    scale = jnp.maximum(jnp.abs(fd), 1.0)
    for name, g, t, f, sc in zip(_DERIVATIVE_POINTS, grad, tangent, fd, scale):
        assert bool(jnp.isfinite(g)) and bool(jnp.isfinite(t)), name
        assert abs(float(g - f)) <= 1e-8 * float(sc), (name, float(g), float(f))
        assert abs(float(t - f)) <= 1e-8 * float(sc), (name, float(t), float(f))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 7, 20])
def test_power_contraction_equals_the_divided_difference_tensor(depth):
    """The balanced kernel's tangent contracts with p[a_k, a_m, a_l] for p(a) = a^L by
    L - 1 matrix products (`power_contraction`); against the n³ tensor of Leibniz's
    recurrence (`polynomial_divided_differences`, an independent algorithm) at repeated,
    zero and spread values of a. Both are sums of ≤ L·n non-negative-weighted terms of
    size ≤ max(a)^(L-2)·|A||B|: rounding ~1e-15 relative, so 1e-12."""
    from node_flow.kernels._linear import polynomial_divided_differences, power_contraction

    a = jnp.array([0.0, 0.3, 0.3, 1.0, 1.7, 2.5])
    kA, kB = jax.random.split(jax.random.key(depth))
    A, B = jax.random.normal(kA, (6, 6)), jax.random.normal(kB, (6, 6))
    _, S = polynomial_divided_differences(a, jnp.zeros(depth))
    expected = jnp.einsum("km,ml,kml->kl", A, B, S)
    got = power_contraction(a, depth)(A, B)
    assert max_abs(got - expected) <= 1e-12 * max(max_abs(expected), 1.0)


def test_relaxed_kernel_gradient_in_lambda_equals_finite_differences():
    """∂/∂λ of ⟨K_L(z)[G], H⟩ at z with a repeated singular value: the implicit derivative of
    the roots a_k(λ) against a fourth-order difference (same error budget as above)."""
    zs, G, H, _ = _derivative_points()
    z = zs[1]
    lam, d = jnp.array([0.3, -0.5, 0.2]), jnp.array([1.0, -2.0, 0.5])
    phi = lambda lam: jnp.sum(nf.kernels.relaxed_balanced(z, G, lam) * H)
    fd = jax.jit(lambda lam: _fd4(lambda h: phi(lam + h * d), 1e-3))(lam)
    assert abs(float(jax.jit(jax.grad(phi))(lam) @ d - fd)) <= 1e-8 * max(abs(float(fd)), 1.0)


def test_two_layer_relaxed_kernel_derivative_at_rank_deficient_z():
    """L = 2, λ > 0: K = (λ/2 + (zzᵀ + λ²/4)^½) G + G(−λ/2 + (zᵀz + λ²/4)^½) is smooth even at
    a z with two zero singular values; its gradient there matches finite differences."""
    zs, G, H, V = _derivative_points()
    z = zs[0] * jnp.asarray([1.0, 0.0, 0.0])  # rank one, two zero singular values
    lam = jnp.array([0.7])
    phi = lambda z: jnp.sum(nf.kernels.relaxed_balanced(z, G, lam) * H)
    fd = jax.jit(lambda z: _fd4(lambda h: phi(z + h * V), 1e-3))(z)
    assert abs(float(jnp.sum(jax.jit(jax.grad(phi))(z) * V) - fd)) <= 1e-8 * max(
        abs(float(fd)), 1.0
    )


@pytest.mark.slow
def test_implicit_solver_through_the_neural_ode_kernel_matches_explicit_solve():
    """Kvaerno5 needs the Jacobian of z ↦ −K_∞(z)[∇ℓ(z)] from z = I (all singular values
    equal: autodiff through the SVD made it fail with "z is singular"). The implicit solve
    equals the explicit (Tsit5) one to 1e-6: both are controlled at rtol = atol = 1e-8 over
    t ≤ 1, where the global error is observed at ~5e-8."""
    import diffrax

    kx, ky = jax.random.split(jax.random.key(8))
    loss = nf.LeastSquares(jax.random.normal(kx, (3, 6)), jax.random.normal(ky, (3, 6)))
    implicit = nf.intrinsic_flow(
        jnp.eye(3), loss, nf.kernels.neural_ode, 1.0, solver=diffrax.Kvaerno5()
    )
    explicit = nf.intrinsic_flow(jnp.eye(3), loss, nf.kernels.neural_ode, 1.0)
    assert max_abs(implicit.zs[-1] - explicit.zs[-1]) <= 1e-6
    assert float(implicit.losses[-1]) < float(implicit.losses[0])


@pytest.mark.parametrize("smallest", [1e-16, 1e-15, 0.0])
def test_neural_ode_kernel_refuses_numerically_singular_z(smallest):
    """σ_min/σ_max ≤ 10 n ε (6.7e-15 at n = 3) is below the resolution of the SVD: refused,
    eagerly and under jit, with the documented message."""
    z = _with_singular_values(4, [1.0, 0.5, smallest])
    with pytest.raises(Exception, match="z is singular"):
        nf.kernels.neural_ode(z, jnp.eye(3))
    with pytest.raises(Exception, match="z is singular"):
        jax.jit(nf.kernels.neural_ode)(z, jnp.eye(3))
    # just above the threshold, z is accepted
    fine = _with_singular_values(4, [1.0, 0.5, 1e-13])
    assert bool(jnp.all(jnp.isfinite(nf.kernels.neural_ode(fine, jnp.eye(3)))))


@pytest.mark.parametrize(
    "call, argument, under_jit",
    [
        (
            lambda z, lam: nf.kernels.neural_ode(z, jnp.eye(3)),
            "z",
            "z is singular \\(or not finite",
        ),
        (lambda z, lam: nf.kernels.balanced(z, jnp.eye(3), 2), "z", None),
        (lambda z, lam: nf.kernels.relaxed_balanced(z, jnp.eye(3), lam), "z", None),
        (
            lambda z, lam: nf.kernels.relaxed_balanced(jnp.eye(3), jnp.eye(3), lam),
            "lambdas",
            "`lambdas` holds NaN or inf",
        ),
    ],
)
def test_kernels_refuse_nan_inputs(call, argument, under_jit):
    """Eagerly: a `ValueError` naming the argument. Under jit, a NaN λ (a parameter) raises by
    `eqx.error_if`, and K_∞ by its singular-z check; the linear kernels do not raise on a NaN z
    (the state of a flow: adaptive solvers evaluate non-finite trial stages that they then
    reject), but a NaN z never comes back as a finite number."""
    z = jnp.eye(3).at[1, 2].set(jnp.nan)
    lam = jnp.array([0.2, jnp.nan])
    with pytest.raises(ValueError, match=f"`{argument}` holds NaN or inf"):
        call(z, lam)
    if under_jit is not None:
        with pytest.raises(Exception, match=under_jit):
            jax.jit(call)(z, lam)
    else:
        assert not bool(jnp.all(jnp.isfinite(jax.jit(call)(z, jnp.array([0.2, 0.1])))))
