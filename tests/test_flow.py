"""Gradient flows and intrinsic flows of deep linear networks (THEORY §1–2, claims 1–2)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import node_flow as nf

from .helpers import max_abs, quartic_loss, rel_err, saxe_mode


TOL = dict(rtol=1e-10, atol=1e-10)


def _data(n, seed=0):
    kx, ky = jax.random.split(jax.random.key(1000 + seed))
    X = jax.random.normal(kx, (n, 2 * n)) / (2 * n) ** 0.5
    Y = jax.random.normal(ky, (n, 2 * n))
    return nf.LeastSquares(X, Y)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class _OneOfTwoLosses(eqx.Module):
    """w[0]·least squares + w[1]·quartic with w ∈ {(1, 0), (0, 1)}: lets one compiled,
    vmapped solve run both losses (the weights are data, not code)."""

    least_squares: nf.LeastSquares
    w: jax.Array

    def __call__(self, z):
        return self.w[0] * self.least_squares(z) + self.w[1] * quartic_loss(z)


# One point of the (depth, width) grid runs in `make test`; the rest of the grid is `slow`
# (each point compiles two flows) and runs in `make test-slow`.
_FAST_GRID = {(2, 3)}


@pytest.mark.parametrize(
    "depth, n",
    [
        pytest.param(d, n, marks=() if (d, n) in _FAST_GRID else pytest.mark.slow)
        for d in (2, 3, 5, 8)
        for n in (1, 3, 6)
    ],
)
def test_parameter_flow_matches_intrinsic_flow(depth, n):
    """Claim 1: for relaxed balanced starts with random mixed-sign λ (two seeds), with the
    least-squares loss and with the quartic loss ¼||zᵀz − I||², the parameter flow and
    z' = −K_L(z)∇ℓ(z) give the same z(t). The four runs are batched by vmap. Both solves
    use rtol = atol = 1e-10 on t ∈ [0, 1]; the global error is O(1e-9), hence the
    acceptance bound 1e-7 (1 + |z|). λ_j ~ U(−0.6, 0.6)/L keeps |z| = O(1), where the
    quartic loss is not stiff."""
    ls = _data(n)
    runs = []
    for seed in range(2):
        k_lam, k_net = jax.random.split(jax.random.key(10 * depth + seed))
        lam = jax.random.uniform(k_lam, (depth - 1,), minval=-0.6, maxval=0.6) / depth
        lam = lam.at[0].set((-0.3 if seed == 0 else 0.3) / depth)  # both signs present
        net = nf.init.relaxed_balanced(k_net, (n,) * (depth + 1), lam, scale=0.9)
        for w in ([1.0, 0.0], [0.0, 1.0]):
            runs.append((net, lam, _OneOfTwoLosses(ls, jnp.array(w))))
    nets, lams, losses = (_stack(x) for x in zip(*runs))
    ts = jnp.linspace(0.0, 1.0, 11)

    def both(net, lam, loss):
        kernel = Partial(nf.kernels.relaxed_balanced, lambdas=lam)
        param = nf.gradient_flow(net, loss, 1.0, ts=ts, **TOL)
        intr = nf.intrinsic_flow(net.lift(), loss, kernel, 1.0, ts=ts, **TOL)
        return param.zs, intr.zs

    z_param, z_intr = jax.vmap(both)(nets, lams, losses)
    for i in range(len(runs)):
        scale = 1 + max_abs(z_param[i])
        assert max_abs(z_param[i] - z_intr[i]) <= 1e-7 * scale
        moved = max_abs(z_param[i, 0] - z_param[i, -1])
        assert moved > 1e-3 * max_abs(z_param[i, 0])  # the flow really moved


@pytest.mark.parametrize(
    "widths", [(3, 3, 3), (2, 4, 3), (3, 3, 3, 3, 3), (4, 2, 5, 3), (2, 2, 2, 2, 2, 2)]
)
def test_conservation_laws_are_constant_from_generic_starts(widths):
    """Claim 2: C_j(t) = C_j(0) for t ∈ [0, 5] from unbalanced Gaussian starts. Solved at
    rtol = atol = 1e-12, the drift is O(1e-11) relative, well inside the 1e-9 bound."""
    net = nf.init.gaussian(jax.random.key(sum(widths)), widths, std=0.7)
    loss = _data(widths[0])
    loss = nf.LeastSquares(
        loss.X, jax.random.normal(jax.random.key(5), (widths[-1], loss.X.shape[1]))
    )
    sol = nf.gradient_flow(net, loss, 5.0, ts=jnp.linspace(0, 5, 6), rtol=1e-12, atol=1e-12)
    assert float(sol.losses[-1]) < 0.9 * float(sol.losses[0])  # it trained
    C0 = nf.conservation_laws(net)
    for i in range(1, 6):
        Ct = nf.conservation_laws(jax.tree.map(lambda x: x[i], sol.models))
        for a, b in zip(Ct, C0):
            assert max_abs(a - b) <= 1e-9 * max(1.0, max_abs(b))
    assert any(max_abs(C) > 0.1 for C in C0)  # generic: far from balanced


def _aligned_problem(n, s, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    Uo, Vo = (jnp.linalg.qr(jax.random.normal(k, (n, n)))[0] for k in (k1, k2))
    target = Uo @ jnp.diag(s) @ Vo.T
    # REFERENCES convention: whitened inputs, loss ½||z − target||² = LeastSquares(√n I, √n Y).
    loss = nf.LeastSquares(n**0.5 * jnp.eye(n), n**0.5 * target)
    return Uo, Vo, loss


def test_saxe_two_layer_exact_solution():
    """Saxe et al. (2014) eq. 12 for the balanced aligned start W2 = U√u0 Rᵀ, W1 = R√u0 Vᵀ."""
    n = 3
    s = jnp.array([3.0, 1.5, 0.5])
    u0 = jnp.array([1e-2, 2e-2, 5e-2])
    Uo, Vo, loss = _aligned_problem(n, s)
    R = jnp.linalg.qr(jax.random.normal(jax.random.key(9), (n, n)))[0]
    net = nf.LinearNetwork(((R * jnp.sqrt(u0)) @ Vo.T, (Uo * jnp.sqrt(u0)) @ R.T))
    ts = jnp.linspace(0.0, 6.0, 61)
    sol = nf.gradient_flow(net, loss, 6.0, ts=ts, rtol=1e-11, atol=1e-11)
    u = np.stack([saxe_mode(np.asarray(ts), float(si), float(ui)) for si, ui in zip(s, u0)], 1)
    exact = jnp.einsum("ik,tk,jk->tij", Uo, jnp.asarray(u), Vo)
    assert max_abs(sol.zs - exact) <= 1e-7
    assert float(jnp.min(u[-1] / s)) > 0.9  # every mode was learnt


@pytest.mark.parametrize("depth", [3, 4])
def test_saxe_deep_time_to_learn_by_quadrature(depth):
    """Saxe et al. (2014) eq. 15: u' = N u^{2−2/N}(s − u) for N equal balanced aligned
    factors. The time to go from u0 to u_f is ∫ du / (N u^{2−2/N}(s − u)) (200-point
    Gauss–Legendre, relative error < 1e-13); the flow reaches u_f then to 1e-8."""
    n, s_val, u0, uf = 2, 2.0, 0.3, 1.6
    x, w = np.polynomial.legendre.leggauss(200)
    u = u0 + (uf - u0) * (x + 1) / 2
    t_star = float(np.sum(w * (uf - u0) / 2 / (depth * u ** (2 - 2 / depth) * (s_val - u))))
    s = jnp.array([s_val, 0.5])
    Uo, Vo, loss = _aligned_problem(n, s, seed=1)
    frames = [Vo] + [random_orthogonal_np(i, n) for i in range(depth - 1)] + [Uo]
    a = jnp.array([u0, 0.5]) ** (1.0 / depth)
    weights = tuple((frames[j + 1] * a) @ frames[j].T for j in range(depth))
    sol = nf.gradient_flow(nf.LinearNetwork(weights), loss, t_star, rtol=1e-12, atol=1e-12)
    u_final = Uo[:, 0] @ sol.zs[-1] @ Vo[:, 0]
    assert abs(float(u_final) - uf) <= 1e-8


def random_orthogonal_np(seed, n):
    return jnp.linalg.qr(jax.random.normal(jax.random.key(77 + seed), (n, n)))[0]


def test_metric_equals_dense_jacobian_product():
    """M(θ)[G] by jvp/vjp equals J Jᵀ vec(G) with the Jacobian J formed densely."""
    net = nf.init.gaussian(jax.random.key(3), (3, 4, 2, 3))
    G = jax.random.normal(jax.random.key(4), (3, 3))
    flat, unravel = jax.flatten_util.ravel_pytree(net.weights)
    J = jax.jacfwd(lambda p: nf.LinearNetwork(unravel(p)).lift().reshape(-1))(flat)
    assert rel_err(nf.metric(net, G), (J @ (J.T @ G.reshape(-1))).reshape(3, 3)) <= 1e-13


def test_lifted_velocity_is_minus_metric_of_loss_gradient():
    """z'(0) = −M(θ)∇ℓ(z): Richardson-extrapolated finite difference of the solved flow
    (O(h²) = 1e-6 truncation with h = 1e-3) against the metric."""
    net = nf.init.gaussian(jax.random.key(8), (3, 3, 3, 3))
    loss = _data(3)
    h = 1e-3
    sol = nf.gradient_flow(net, loss, h, ts=jnp.array([0.0, h / 2, h]), rtol=1e-13, atol=1e-13)
    z0, zh2, zh = sol.zs
    d = 2 * (zh2 - z0) / (h / 2) - (zh - z0) / h
    expected = -nf.metric(net, jax.grad(loss)(z0))
    assert rel_err(d, expected) <= 1e-5


def test_vector_field_evaluation_count_is_exact():
    """`stats['num_vf_evals']` equals an independent runtime count (a debug callback in the
    loss, which the vector field evaluates once per call)."""
    counter = {"n": 0}

    def counting_loss(z):
        jax.debug.callback(lambda: counter.__setitem__("n", counter["n"] + 1))
        return quartic_loss(z)

    net = nf.init.balanced(jax.random.key(0), (2, 2, 2), scale=0.9)
    sol = nf.gradient_flow(net, counting_loss, 0.5, ts=jnp.array([0.5]), rtol=1e-6, atol=1e-6)
    jax.effects_barrier()
    saves = 1
    assert counter["n"] - saves == int(sol.stats["num_vf_evals"])
    assert int(sol.stats["num_steps"]) == int(sol.stats["num_accepted_steps"]) + int(
        sol.stats["num_rejected_steps"]
    )


def test_a_flow_traces_its_vector_field_and_save_function_once():
    """The solver calls the vector field at y0, in the step and after rejections, and the
    save function at every save point; each call after the first reuses one trace (a
    neural-ODE field is itself a solve: re-tracing it was most of a warm start). So the
    loss's Python body runs three times: the input check, the field (`value_and_grad`)
    and the saves; twelve without the inner jit. A second flow of the same shapes traces
    nothing."""
    calls = []

    def loss(z):
        calls.append(None)
        return quartic_loss(z)

    net = nf.init.balanced(jax.random.key(0), (2, 2, 2), scale=0.9)
    nf.gradient_flow(net, loss, 0.5, ts=jnp.linspace(0.0, 0.5, 4))
    assert len(calls) == 3
    calls.clear()
    sol = nf.gradient_flow(net, loss, 0.7, ts=jnp.linspace(0.0, 0.7, 4))
    assert len(calls) == 0 and sol.result == nf.RESULTS.successful


def test_solution_fields_and_default_save_times():
    net = nf.init.balanced(jax.random.key(0), (2, 3, 2))
    sol = nf.gradient_flow(net, _data(2), 1.0)
    assert sol.ts.shape == (2,) and float(sol.ts[-1]) == 1.0
    assert sol.zs.shape == (2, 2, 2) and sol.losses.shape == (2,)
    assert sol.models.weights[0].shape == (2, 3, 2)
    assert sol.result == nf.RESULTS.successful
    assert max_abs(sol.zs[0] - net.lift()) == 0.0


def test_time_scale_rescales_time():
    """θ' = −τ∇L: the flow with τ = 2 at t equals the flow with τ = 1 at 2t."""
    net = nf.init.gaussian(jax.random.key(2), (3, 3, 3))
    loss = _data(3)
    a = nf.gradient_flow(net, loss, 0.5, time_scale=2.0, **TOL)
    b = nf.gradient_flow(net, loss, 1.0, **TOL)
    assert max_abs(a.zs[-1] - b.zs[-1]) <= 1e-8


def test_max_steps_raises_a_clear_error():
    net = nf.init.gaussian(jax.random.key(0), (3, 3, 3))
    with pytest.raises(nf.FlowError, match="maximum number of solver steps"):
        nf.gradient_flow(net, _data(3), 10.0, max_steps=3)
    sol = nf.gradient_flow(net, _data(3), 10.0, max_steps=3, throw=False)
    assert sol.result == nf.RESULTS.max_steps_reached


def test_blow_up_is_detected_and_named():
    """ℓ(z) = −||z||² on a one-layer network: θ' = 2θ grows like e^{2t} and crosses the
    blow-up radius 1e8·max(1, |θ0|) at t ≈ ln(1e8)/2 ≈ 9.2 < t1."""
    net = nf.LinearNetwork((jnp.array([[0.5, -0.2], [0.1, 0.3]]),))
    loss = lambda z: -jnp.sum(z**2)
    with pytest.raises(nf.FlowError, match="blew up"):
        nf.gradient_flow(net, loss, 100.0)
    sol = nf.gradient_flow(net, loss, 100.0, throw=False)
    assert sol.result == nf.RESULTS.blew_up
    assert 8.0 < float(sol.t_final) < 10.0


def test_finite_time_singularity_is_named():
    """ℓ(z) = −||z||⁴: θ ~ (t* − t)^(−1/6) blows up at a finite t* the solver cannot pass;
    reported as a collapsed step size, not as an opaque max_steps."""
    net = nf.init.gaussian(jax.random.key(0), (2, 2, 2))
    loss = lambda z: -(jnp.sum(z**2) ** 2)
    with pytest.raises(nf.FlowError, match="blew up|finite-time singularity"):
        nf.gradient_flow(net, loss, 100.0)


def test_nonfinite_gradient_is_named():
    net = nf.init.gaussian(jax.random.key(0), (2, 2, 2))
    loss = lambda z: jnp.sqrt(-jnp.sum(z**2))  # NaN everywhere
    with pytest.raises(nf.FlowError, match="not finite"):
        nf.gradient_flow(net, loss, 1.0, max_steps=50)


def test_bad_inputs_to_flows():
    net = nf.init.gaussian(jax.random.key(0), (2, 2, 2))
    with pytest.raises(TypeError, match="must return a scalar"):
        nf.gradient_flow(net, lambda z: z, 1.0)
    with pytest.raises(TypeError, match="must return a scalar"):
        nf.intrinsic_flow(net.lift(), lambda z: z.sum(0), nf.kernels.neural_ode, 1.0)
    with pytest.raises(TypeError, match="`.lift\\(\\)` method"):
        nf.gradient_flow(jnp.ones(3), quartic_loss, 1.0)
    bad = eqx.tree_at(lambda m: m.weights[0], net, jnp.full((2, 2), jnp.nan))
    with pytest.raises(ValueError, match="non-finite"):
        nf.gradient_flow(bad, quartic_loss, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        nf.intrinsic_flow(jnp.full((2, 2), jnp.inf), quartic_loss, nf.kernels.neural_ode, 1.0)
    with pytest.raises(ValueError, match="kernel"):
        nf.intrinsic_flow(jnp.eye(2), quartic_loss, lambda z, G: G[0], 1.0)
    with pytest.raises(ValueError, match="ts"):
        nf.gradient_flow(net, quartic_loss, 1.0, ts=jnp.array([0.5, 0.2]))


def test_event_stops_the_flow():
    """A user event (loss below a threshold) stops the solve at the crossing time."""
    net = nf.init.balanced(jax.random.key(0), (2, 2, 2), scale=0.5)
    loss = _data(2)
    threshold = 0.9 * float(loss(net.lift()))
    event = lambda t, model: loss(model.lift()) - threshold
    sol = nf.gradient_flow(net, loss, 50.0, event=event, **TOL)
    assert sol.result == nf.RESULTS.event_occurred
    t_event = float(sol.t_final)
    check = nf.gradient_flow(net, loss, t_event, **TOL)
    assert abs(float(check.losses[-1]) - threshold) <= 1e-7


@pytest.mark.slow
def test_flows_under_jit_with_traced_times_and_tolerances():
    """Inside a user's `jax.jit`, t1, ts and the tolerances are tracers (the host-side
    fast path must not touch them): the same z(t) as the eager call, to rounding (1e-12:
    identical steps, only the compilation differs)."""
    net = nf.init.balanced(jax.random.key(2), (3, 3, 3, 3), scale=1.0)
    loss = _data(3)
    kernel = lambda z, G: nf.kernels.balanced(z, G, 3)

    def run(t1, ts, rtol):
        p = nf.gradient_flow(net, loss, t1, ts=ts, rtol=rtol, atol=1e-9)
        i = nf.intrinsic_flow(net.lift(), loss, kernel, t1, rtol=rtol, atol=1e-9)
        return p.zs, i.zs

    ts = jnp.linspace(0.0, 0.5, 4)
    eager = run(0.5, ts, 1e-9)
    jitted = jax.jit(run)(jnp.asarray(0.5), ts, jnp.asarray(1e-9))
    for a, b in zip(eager, jitted):
        assert a.shape == b.shape and max_abs(a - b) <= 1e-12
    assert max_abs(eager[0][-1] - eager[1][-1]) <= 1e-7  # and the flows agree


def _one_layer_closed_form(X, Y, z0, t):
    """z(t) of z' = -(zX − Y)Xᵀ/N: z* + (z0 − z*) expm(−t XXᵀ/N), z* = YXᵀ(XXᵀ)⁻¹."""
    import scipy.linalg

    X, Y, z0 = (np.asarray(a) for a in (X, Y, z0))
    zstar = Y @ X.T @ np.linalg.inv(X @ X.T)
    return zstar + (z0 - zstar) @ scipy.linalg.expm(-t * X @ X.T / X.shape[1])


def test_saves_at_irregular_and_repeated_times_match_the_closed_form():
    """node_flow saves at `ts` itself (from each step's interpolant, as diffrax's SaveAt
    does): at t0, repeated times, a time just after t0, one just before t1 and t1, the
    saves equal the closed form of a linear flow within 1e-8 (rtol = atol = 1e-12; the
    Tsit5 interpolant is accurate to about the step's local error), and after a
    `target_loss` stop the unreached saves are `inf`, the reached ones exact."""
    kx, ky, kz = jax.random.split(jax.random.key(7), 3)
    X, Y = jax.random.normal(kx, (3, 6)), jax.random.normal(ky, (2, 6))
    z0 = jax.random.normal(kz, (2, 3))
    loss = nf.LeastSquares(X, Y)
    ts = jnp.array([0.0, 0.0, 1e-3, 0.7, 0.7, 1.3, 2.0 - 1e-9, 2.0])
    sol = nf.gradient_flow(nf.LinearNetwork((z0,)), loss, 2.0, ts=ts, rtol=1e-12, atol=1e-12)
    assert np.array_equal(np.asarray(sol.ts), np.asarray(ts))
    for t, z in zip(np.asarray(ts), np.asarray(sol.zs)):
        assert max_abs(z - _one_layer_closed_form(X, Y, z0, t)) <= 1e-8
    target = 0.5 * (float(sol.losses[3]) + float(sol.losses[5]))  # crossed in (0.7, 1.3)
    stop = nf.gradient_flow(
        nf.LinearNetwork((z0,)), loss, 2.0, ts=ts, target_loss=target, rtol=1e-12, atol=1e-12
    )
    assert 0.7 < float(stop.t_final) < 1.3
    reached = np.asarray(ts) <= float(stop.t_final)
    assert np.all(np.isinf(np.asarray(stop.ts)[~reached]))
    assert np.all(np.isinf(np.asarray(stop.zs)[~reached]))
    assert max_abs(stop.zs[reached] - sol.zs[reached]) <= 1e-12  # the same steps up to there
