"""The linear neural ODE, residual networks and their depth limit (THEORY §3, claim 4)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm
from jax.tree_util import Partial

import node_flow as nf

from .helpers import fit_slope, max_abs, rel_err


N = 3
KEY = jax.random.key(42)
TOL = dict(rtol=1e-10, atol=1e-10)


def oscillating(s):
    """λ(s) = 2 cos 2πs: ∫₀¹(1 − r)λ(r)dr = 0, so z0 is the same as for λ = 0."""
    return 2.0 * jnp.cos(2 * jnp.pi * s)


def _loss():
    kx, ky = jax.random.split(jax.random.key(7))
    return nf.LeastSquares(
        jax.random.normal(kx, (N, 2 * N)) / (2 * N) ** 0.5, jax.random.normal(ky, (N, 2 * N))
    )


@pytest.fixture(scope="module")
def weights():
    return nf.neural_ode.relaxed_balanced_weights(KEY, N, oscillating)


def _rk4_lift(node, steps_per_cell=200):
    """Φ(1, 0) of the piecewise-linear interpolant of `node.A` by classical RK4 in NumPy
    with a fixed step aligned to the nodes (no diffrax, no basis object): global error
    O(h⁴) with h = 1/(200 m), ~1e-13 here."""
    A = np.asarray(node.A)
    m, n = A.shape[0] - 1, A.shape[1]

    def a(s):
        i = min(int(s * m), m - 1)
        w = s * m - i
        return (1 - w) * A[i] + w * A[i + 1]

    h = 1.0 / (m * steps_per_cell)
    Phi = np.eye(n)
    for k in range(m * steps_per_cell):
        s = k * h
        # the stage at s + h is evaluated inside the same cell (continuous interpolant)
        k1 = a(s) @ Phi
        k2 = a(s + h / 2) @ (Phi + h / 2 * k1)
        k3 = a(s + h / 2) @ (Phi + h / 2 * k2)
        k4 = a(min(s + h, 1.0)) @ (Phi + h * k3)
        Phi = Phi + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return Phi


@pytest.mark.slow  # make test time: 11 s (a lift per grid size)
def test_refine_leaves_the_weight_function_and_the_lift_unchanged(weights):
    """Refining represents the same A(s) (hat functions: midpoint values; cells: copies),
    so the refined lift equals the coarse one's independent value: the product of cell
    exponentials Π exp(h A_i) (constant) or a fine fixed-step RK4 solve (linear)."""
    for kind in ("linear", "constant"):
        node = weights.grid(5, kind, solver=diffrax.Dopri5(), rtol=1e-12, atol=1e-12)
        fine = node.refine()
        assert fine.m == 10 and fine.interpolation == kind
        assert fine.solver == diffrax.Dopri5() and fine.rtol == 1e-12
        s = jnp.linspace(0.0, 0.999, 37)
        assert max_abs(fine.at(s) - node.at(s)) <= 1e-14
        if kind == "constant":
            expected = np.eye(N)
            for i in range(5):
                expected = np.asarray(expm(node.A[i] / 5)) @ expected
        else:
            expected = _rk4_lift(node)
        # an adaptive solve at rtol = atol = 1e-12: global error O(steps · tol) ≈ 1e-11;
        # the references are exact (constant) or O(h⁴) ≈ 1e-13 (RK4).
        assert max_abs(fine.lift() - expected) <= 1e-10
        assert max_abs(node.lift() - expected) <= 1e-10


def test_refine_and_forward_mode_keep_every_setting():
    """Basis, solver, step-size controller, adjoint, max_steps and dt0 survive `refine()`
    and `forward_mode()` (which changes only the adjoint)."""
    A = jax.random.normal(jax.random.key(5), (4, 2, 2))
    settings = dict(
        solver=diffrax.Bosh3(),
        stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9, pcoeff=0.1, icoeff=0.3),
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=50),
        max_steps=777,
        dt0=0.01,
    )
    node = nf.LinearNeuralODE(A, nf.neural_ode.PiecewiseConstant(), **settings)
    fine = node.refine().refine()
    assert fine.m == 12 and isinstance(fine.basis, nf.neural_ode.PiecewiseConstant)
    for name, value in settings.items():
        assert getattr(fine, name) == value, name
    twin = fine.forward_mode()
    assert twin.adjoint == diffrax.ForwardMode() and twin.forward_autodiff
    for name, value in settings.items():
        if name != "adjoint":
            assert getattr(twin, name) == value, name
    assert nf.LinearNeuralODE(A, "constant").basis == node.basis  # the shorthand


def test_a_fixed_step_euler_solve_is_the_residual_product():
    """With `diffrax.Euler()` and `diffrax.ConstantStepSize()` (dt0 default: one step per
    cell), the lift of a piecewise-constant A is exactly Π_i (I + A_i / m), the residual
    network of its cell values (an independent product): the configured solver is the one
    used. After `refine()` with an explicit dt0 = 1/m the steps still sample the coarse
    nodes, so the product is unchanged."""
    A = jax.random.normal(jax.random.key(6), (5, 2, 2))
    euler = dict(solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize())
    node = nf.LinearNeuralODE(A, "constant", **euler)
    expected = nf.ResidualLinearNetwork(A[:-1]).lift()
    assert max_abs(node.lift() - expected) <= 1e-14
    pinned = nf.LinearNeuralODE(A, "constant", dt0=0.25, **euler).refine()
    assert pinned.m == 8 and pinned.dt0 == 0.25
    assert max_abs(pinned.lift() - expected) <= 1e-14


def test_at_interpolates_the_node_values(weights):
    node = weights.grid(4)
    assert max_abs(node.at(node.nodes) - node.A) <= 1e-15
    assert max_abs(node.at(0.125) - 0.5 * (node.A[0] + node.A[1])) <= 1e-15
    const = weights.grid(4, "constant")
    assert max_abs(const.at(0.2) - const.A[0]) == 0.0


def test_constant_lift_is_the_product_of_cell_exponentials(weights):
    """Piecewise-constant A: Φ(1, 0) = Π_i exp(h A_i) exactly (an independent formula)."""
    node = weights.grid(6, "constant")
    expected = jnp.eye(N)
    for i in range(6):
        expected = expm(node.A[i] / 6) @ expected
    assert max_abs(node.lift() - expected) <= 1e-9


@pytest.mark.slow
def test_lift_converges_at_second_order_for_linear_interpolation(weights):
    """|Φ_m(1, 0) − e^K e^{S0} e^{∫μ}| = O(h²) for the piecewise-linear interpolant."""
    ms = [4, 8, 16, 32]
    errs = [max_abs(weights.grid(m).lift() - weights.z0()) for m in ms]
    slope, _ = fit_slope(ms, errs)
    assert -2.2 <= slope <= -1.8


@pytest.mark.slow  # make test time: 16 s of compilation (reverse mode through nested solves)
def test_gradient_through_the_forward_solve_matches_finite_differences(weights):
    """Reverse mode through diffrax vs central differences (step 1e-5: truncation 1e-10,
    rounding of 1e-10-accurate solves / 1e-5 = 1e-5 relative at worst; bound 1e-5)."""
    node = weights.grid(3)
    G = jax.random.normal(jax.random.key(1), (N, N))
    f = lambda A: jnp.sum(nf.LinearNeuralODE(A).lift() * G)
    grad = jax.grad(f)(node.A)
    direction = jax.random.normal(jax.random.key(2), node.A.shape)
    eps = 1e-5
    fd = (f(node.A + eps * direction) - f(node.A - eps * direction)) / (2 * eps)
    assert abs(float(jnp.vdot(grad, direction)) - float(fd)) <= 1e-5 * abs(float(fd))


def test_conservation_law_is_second_order_at_every_node(weights):
    """Λ of the sampled relaxed balanced weights against the exact λ(s) I, at the interior
    nodes and separately at the two ends (one-sided second-order differences)."""
    ms = [8, 16, 32, 64]
    interior, ends = [], []
    for m in ms:
        node = weights.grid(m)
        err = jnp.abs(node.conservation_law() - oscillating(node.nodes)[:, None, None] * jnp.eye(N))
        err = jnp.max(err, axis=(1, 2))
        interior.append(float(jnp.max(err[1:-1])))
        ends.append(max(float(err[0]), float(err[-1])))
    for errs in (interior, ends):
        slope, _ = fit_slope(ms, errs)
        assert -2.3 <= slope <= -1.7


@pytest.mark.slow
def test_l2_flow_speed_does_not_change_under_refinement(weights):
    """z'(0) = −M(A)[∇ℓ] for the same piecewise-linear function on grids of 4, 8, 16
    cells: the L² gradient keeps the speed (ratio 1, not 2 as a Euclidean gradient of the
    node values would give), and M(A_h) converges to the continuum K_∞ as the grid is
    refined."""
    loss = _loss()
    coarse = weights.grid(4)
    nodes = [coarse, coarse.refine(), coarse.refine().refine()]
    G = jax.grad(loss)(coarse.lift())
    speeds = [nf.metric(node, G) for node in nodes]
    for a, b in zip(speeds, speeds[1:]):
        ratio = float(jnp.linalg.norm(b) / jnp.linalg.norm(a))
        assert abs(ratio - 1) <= 0.01
    # and against the continuum kernel, for sampled (not refined) grids:
    errs = []
    for m in (4, 8, 16):
        node = weights.grid(m)
        z = node.lift()
        g = jax.grad(loss)(z)
        errs.append(rel_err(nf.metric(node, g), nf.kernels.neural_ode(z, g)))
    # At least second order. (Measured: fourth, since both sides are evaluated at the same
    # z_h the leading O(h²) defect of relaxed balancedness cancels.)
    slope, _ = fit_slope([4, 8, 16], errs)
    assert slope <= -1.8
    assert errs[0] < 1e-3


@pytest.fixture(scope="module")
def grid_flows(weights):
    """Training flows of the sampled weight function on 4, 8, 16 cells, and the continuum
    intrinsic flow from the exact z0 (T = 1, forward tolerance 1e-10)."""
    loss = _loss()
    ts = jnp.linspace(0.0, 1.0, 6)
    flows = {
        m: nf.gradient_flow(weights.grid(m), loss, 1.0, ts=ts, rtol=1e-9, atol=1e-9)
        for m in (4, 8, 16)
    }
    limit = nf.intrinsic_flow(weights.z0(), loss, nf.kernels.neural_ode, 1.0, ts=ts, **TOL)
    return flows, limit


@pytest.mark.slow
def test_neural_ode_training_converges_to_the_intrinsic_flow_at_second_order(grid_flows):
    """Claim 4 on grids: max_t |z_m(t) − z_∞(t)| = O(h²) (piecewise-linear A)."""
    flows, limit = grid_flows
    ms = sorted(flows)
    errs = [max_abs(flows[m].zs - limit.zs) for m in ms]
    slope, _ = fit_slope(ms, errs)
    assert -2.2 <= slope <= -1.8
    assert max_abs(limit.zs[0] - limit.zs[-1]) > 0.1  # it trained


@pytest.mark.slow
def test_conservation_law_drift_decays_at_second_order(grid_flows):
    """Λ(t) − Λ(0) at the nodes along the grid training flow → 0 like h², ends included."""
    flows, _ = grid_flows
    ms = sorted(flows)
    inner, ends = [], []
    for m in ms:
        A = flows[m].models.A
        first = nf.LinearNeuralODE(A[0]).conservation_law()
        last = nf.LinearNeuralODE(A[-1]).conservation_law()
        drift = jnp.max(jnp.abs(last - first), axis=(1, 2))
        inner.append(float(jnp.max(drift[1:-1])))
        ends.append(max(float(drift[0]), float(drift[-1])))
    for errs in (inner, ends):
        slope, _ = fit_slope(ms, errs)
        assert -2.4 <= slope <= -1.6


def _lambda_k_numpy(lam, L):
    """λ_k = λ(k/L)/L², k = 1..L−1, from the profiles' formulas in NumPy (not from the
    library's `lambdas`, which evaluates the same JAX function the construction uses)."""
    s = np.arange(1, L) / L
    if lam is oscillating:
        return 2.0 * np.cos(2 * np.pi * s) / L**2
    return np.full(L - 1, float(lam)) / L**2


@pytest.mark.parametrize("L", [1, 2, 7, 64, 1000])
@pytest.mark.parametrize("lam", [0.0, 1.5, oscillating])
def test_relaxed_balanced_residual_is_exactly_relaxed_balanced(L, lam):
    """C_k = U_{k+1}ᵀU_{k+1} − U_kU_kᵀ of the built network equals λ(k/L)/L² · I, the
    expectation evaluated from the profile's formula."""
    net = nf.neural_ode.relaxed_balanced_residual(KEY, N, lam, L)
    C = nf.conservation_laws(net)
    assert C.shape == (L - 1, N, N)
    if L > 1:  # entries O(1), rounding of a few 3×3 products: ≤ 1e-12
        expected = _lambda_k_numpy(lam, L)[:, None, None] * np.eye(N)
        assert max_abs(C - expected) <= 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("lam", [0.0, 1.5, oscillating])
def test_relaxed_balanced_residual_converges_to_the_weight_function(lam):
    """A_k → A((k − ½)/L) and z_L → z0 at first order in 1/L."""
    W = nf.neural_ode.relaxed_balanced_weights(KEY, N, lam)
    Ls = [16, 32, 64, 128]
    a_err, z_err = [], []
    for L in Ls:
        net = W.residual(L)
        a_err.append(max_abs(net.A - W.at((jnp.arange(L, dtype=float) + 0.5) / L)))
        z_err.append(max_abs(net.lift() - W.z0()))
    assert -1.15 <= fit_slope(Ls, a_err)[0] <= -0.85
    if lam != 0.0:  # for λ = 0 the product telescopes: z_L = z0 exactly
        assert -1.15 <= fit_slope(Ls, z_err)[0] <= -0.85
    else:
        assert max(z_err) <= 1e-12


@pytest.mark.slow
def test_to_residual_converges_to_the_neural_ode(weights):
    node = weights.grid(8)
    Ls = [16, 32, 64, 128]
    errs = [max_abs(node.to_residual(L).lift() - node.lift()) for L in Ls]
    assert -1.15 <= fit_slope(Ls, errs)[0] <= -0.85


def test_residual_flow_is_the_linear_flow_with_time_scale_one_over_L():
    """The (1/L)Σ||A_k||² metric on A_k is the Euclidean flow of the factors U_k slowed by 1/L."""
    net = nf.neural_ode.relaxed_balanced_residual(KEY, N, 0.7, 6)
    loss = _loss()
    a = nf.gradient_flow(net, loss, 1.0, **TOL)
    b = nf.gradient_flow(net.to_linear(), loss, 1.0, time_scale=1 / 6, **TOL)
    assert max_abs(a.zs - b.zs) <= 1e-8


@pytest.mark.slow
def test_residual_parameter_flow_matches_its_finite_depth_intrinsic_flow():
    """z_L(t) from the parameter flow equals the flow of (1/L) K_L with the λ_k measured on
    the network, for three λ profiles batched by vmap (rtol = atol = 1e-10 ⇒ agreement ≤ 1e-7)."""
    L = 24
    profiles = [0.0, 1.5, oscillating]
    W = [nf.neural_ode.relaxed_balanced_weights(KEY, N, lam) for lam in profiles]
    nets = jax.tree.map(lambda *x: jnp.stack(x), *[w.residual(L) for w in W])
    # λ_k measured on the built networks (trace of their conservation laws / n), not taken
    # from the array the construction used.
    lams = jnp.trace(nf.conservation_laws(nets), axis1=-2, axis2=-1) / N
    loss = _loss()
    ts = jnp.linspace(0.0, 1.0, 6)

    def both(net, lam):
        kernel = Partial(nf.kernels.relaxed_balanced, lambdas=lam)
        p = nf.gradient_flow(net, loss, 1.0, ts=ts, **TOL)
        i = nf.intrinsic_flow(net.lift(), loss, kernel, 1.0, ts=ts, time_scale=1 / L, **TOL)
        return p.zs, i.zs

    zp, zi = jax.vmap(both)(nets, lams)
    assert max_abs(zp - zi) <= 1e-7 * (1 + max_abs(zp))


def test_neural_ode_bad_inputs():
    with pytest.raises(ValueError, match="square node values"):
        nf.LinearNeuralODE(jnp.ones((3, 2, 3)))
    with pytest.raises(ValueError, match="m ≥ 1"):
        nf.LinearNeuralODE(jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        nf.LinearNeuralODE(jnp.full((3, 2, 2), jnp.nan))
    with pytest.raises(ValueError, match="interpolation"):
        nf.LinearNeuralODE(jnp.ones((3, 2, 2)), "cubic")
    with pytest.raises(ValueError, match="m ≥ 2"):
        nf.LinearNeuralODE(jnp.ones((2, 2, 2))).conservation_law()
    with pytest.raises(ValueError, match="infeasible"):
        nf.neural_ode.relaxed_balanced_residual(KEY, N, -40.0, 2)
    with pytest.raises(ValueError, match="scalar"):
        nf.neural_ode.relaxed_balanced(KEY, N, 8, lambda s: jnp.ones(2) * s)
    with pytest.raises(ValueError, match="not finite"):
        nf.neural_ode.relaxed_balanced(KEY, N, 8, lambda s: jnp.log(s - 0.5))
    with pytest.raises(ValueError, match="`m` must be an integer ≥ 1"):
        nf.neural_ode.relaxed_balanced(KEY, N, 0)
    with pytest.raises(ValueError, match="shape"):
        nf.ResidualLinearNetwork(jnp.ones((3, 2, 3)))
