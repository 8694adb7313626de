"""ReLU training through kinks (`relu.train`): the sliding (Filippov) solution against its
closed form, the autodiff convention's chattering diagnosis, the crash of the kink event's
root finder, and the input checks of `train` and `recover_squares`."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import node_flow.relu as relu


# -- a sliding solution in closed form -----------------------------------------------------
#
# f(x) = u · relu(w·x), w ∈ R², one hidden neuron (id 2), no biases, two samples in the
# frame of a rotation R: x₁ = R e₁ (target −1), x₂ = R (c, 1) (target Y₂), N = 2.
# On the kink a₁ = w·x₁ = 0 with gate λ on sample 1, f₁ = 0 and r₂ = u w·x₂ − Y₂:
#   ∂L/∂(w·x₁) ∝ (u/2)(λ + c r₂)   ⇒ held at zero iff λ = −c r₂ = c (Y₂ − p),  p = u (w·x₂);
#   with u = |w| = √p (balanced, preserved), ṗ = (Y₂ − p) p: a logistic,
#   p(t) = Y₂ p₀ / (p₀ + (Y₂ − p₀) e^{−Y₂ t}).
# The one-sided rates of a₁ are α₊ = −(u/2)(1 + c r₂) < 0 and α₋ = −(u/2) c r₂ > 0 while
# 0 < c (Y₂ − p) < 1: pushed onto the kink from both sides for all t (λ → 0 as t → ∞).
_C, _Y2, _P0, _T1 = 0.5, 2.0, 0.5, 3.0
_ANGLE = 0.3
_R = np.array([[np.cos(_ANGLE), -np.sin(_ANGLE)], [np.sin(_ANGLE), np.cos(_ANGLE)]])
_X = jnp.asarray(np.stack([_R @ [1.0, 0.0], _R @ [_C, 1.0]]))
_Y = jnp.asarray([[-1.0], [_Y2]])


def _p(t):
    return _Y2 * _P0 / (_P0 + (_Y2 - _P0) * np.exp(-_Y2 * t))


def _one_neuron(offset=0.0):
    """On the kink (offset 0) or `offset` off it along x₁ (positive: active side)."""
    s = np.sqrt(_P0)
    w = _R @ [offset, s]
    return relu.MLP([jnp.asarray(w)[None, :], jnp.asarray([[s]])])


@pytest.fixture(scope="module")
def sliding():
    return relu.train(_one_neuron(), _X, _Y, _T1, saves=7, rtol=1e-11, atol=1e-11)


def test_sliding_solution_matches_its_closed_form(sliding):
    # Oracle: the logistic p(t) and the gate λ(t) = c (Y₂ − p(t)) derived above. Tolerance
    # 1e-8: the flow runs at rtol = atol = 1e-11 over ~3 time units of a contracting ODE.
    sol = sliding
    assert sol.stop_reason == "t1" and sol.convention == "filippov"
    assert len(sol.intervals) == 1 and sol.intervals[0].sliding == ((0, 2),)
    ts = np.asarray(sol.ts[0])
    w = np.asarray(sol.models.weights[0][0, :, 0, :])
    u = np.asarray(sol.models.weights[1][0, :, 0, 0])
    p = _p(ts)
    assert np.max(np.abs(u - np.sqrt(p))) < 1e-8
    assert np.max(np.abs(w - np.sqrt(p)[:, None] * _R[:, 1])) < 1e-8
    assert np.max(np.abs(w @ np.asarray(_X[0]))) < 1e-9  # held on the kink
    lo, hi = sol.intervals[0].gate_range
    assert abs(lo - _C * (_Y2 - p[-1])) < 1e-8 and abs(hi - _C * (_Y2 - _P0)) < 1e-8
    assert np.max(np.abs(np.asarray(sol.losses[0]) - (1 + (_Y2 - p) ** 2) / 4)) < 1e-8


def test_intrinsic_dynamic_holds_on_the_sliding_interval(sliding):
    # On a sliding interval ż = ∂φ θ̇ must equal −K(z, h0) ∇ℓ_G(z) with the gates of the
    # parameter flow: both sides computed independently (autodiff through φ against the
    # recovered-θ² kernel); agreement to the recovery tolerance (Newton to 1e-12).
    iv = sliding.intervals[0]
    assert iv.intrinsic_kind == "velocity" and iv.intrinsic_error < 1e-9
    assert sliding.intrinsic_skipped is None


@pytest.mark.parametrize("offset", [1e-4, -1e-4])
def test_trajectory_driven_onto_the_kink_then_slides(offset):
    # From either side, a distance 1e-4 off the kink: it is reached (one kink event), then
    # followed. The hit time is offset / |α| with the one-sided rate of the side it comes
    # from, α₊ = −(u₀/2)(1 + c r₂) or α₋ = −(u₀/2) c r₂ at t = 0, up to O(offset) relative
    # (the rates drift during the approach). The end point differs from the closed form
    # by O(offset) (the approach shifts time and p), hence 10 × offset.
    sol = relu.train(
        _one_neuron(offset), _X, _Y, _T1, saves=7, rtol=1e-11, atol=1e-11, intrinsic=False
    )
    assert sol.stop_reason == "t1"
    assert [iv.sliding for iv in sol.intervals] == [(), ((0, 2),)]
    assert sol.intervals[1].changed == ((0, 2),)
    u0, r2 = np.sqrt(_P0), _P0 - _Y2
    rate = -(u0 / 2) * (1 + _C * r2) if offset > 0 else -(u0 / 2) * _C * r2
    assert float(sol.switch_times[0]) == pytest.approx(abs(offset / rate), rel=1e-2)
    u_end = float(sol.models.weights[1][-1, -1, 0, 0])
    assert abs(u_end - np.sqrt(_p(_T1))) < 10 * abs(offset)


def test_autodiff_convention_stops_with_a_chattering_diagnosis():
    # ReLU'(0) = 0 has no solution past a two-sided kink: the run stops at the hit and
    # names the time and the (sample, neuron) entry; the finished part is returned.
    sol = relu.train(
        _one_neuron(1e-4), _X, _Y, _T1, saves=7, convention="autodiff", intrinsic=False
    )
    assert sol.stop_reason == "chattering"
    assert sol.chattering.entries == ((0, 2),)
    assert sol.chattering.time == pytest.approx(float(sol.boundaries[-1]))
    assert 0 < sol.chattering.time < 2e-3  # the hit, at 1.13e-3 (see above)
    assert "chatters at t = " in sol.chattering.message and "[(0, 2)]" in sol.chattering.message
    # On the kink at t0: stops at once, the state at t0 returned.
    sol = relu.train(_one_neuron(), _X, _Y, _T1, saves=7, convention="autodiff", intrinsic=False)
    assert sol.stop_reason == "chattering" and sol.chattering.time == 0.0


# -- issue 12 reproducers --------------------------------------------------------------------


def test_mlp_with_a_frozen_neuron_trains_to_t1():
    # The `make relu` tiny run: a hidden neuron whose downstream is dead on all its active
    # samples gets no gradient, so its entry of the (min over entries) kink event is flat;
    # Newton's root finder divided by that zero slope (lineax FlowError at t = nan).
    # Bisection needs only the sign change.
    key_data, _, k3, _ = jr.split(jr.key(0), 4)
    X = jr.normal(key_data, (4, 2))
    Y = jnp.stack([jnp.sin(2 * X[:, 0]) + 0.5 * X[:, 1], jnp.cos(X[:, 0]) * X[:, 1]], axis=1)
    keys = jr.split(k3, 8)
    widths, scales = (2, 3, 3, 2), (1.3, 0.6, 0.9)
    weights = [scales[j] * jr.normal(keys[j], (widths[j + 1], widths[j])) for j in range(3)]
    biases = [0.5 * jr.normal(keys[4 + j], (widths[j + 1],)) for j in range(3)]
    net = relu.MLP(weights, biases)
    sol = relu.train(net, X, Y, 0.2, saves=2, intrinsic=False, rtol=1e-11, atol=1e-11)
    assert sol.stop_reason == "t1" and float(sol.boundaries[-1]) == 0.2
    assert len(sol.intervals) >= 7  # it crosses kinks (8 events at this seed)
    # Every event time is a zero of a pre-activation of the network itself.
    for k in range(len(sol.intervals) - 1):
        end = jax.tree.map(lambda x: x[k, -1], sol.models)
        pre = jax.vmap(end.pre_activations)(X)
        assert float(jnp.min(jnp.abs(pre)) / jnp.max(jnp.abs(pre))) < 1e-8


def test_zero_weights_keep_the_parameter_flow_and_say_why_no_comparison():
    # θ = 0: every z_p = 0, so z does not determine θ² and K(z, h0) is undefined. The flow
    # (a critical point: it stays at 0) is returned, with the reason.
    net = relu.MLP([jnp.zeros((1, 2)), jnp.zeros((1, 1))])  # the shapes of `_one_neuron`
    sol = relu.train(net, _X, _Y, 0.5, saves=7)
    assert sol.stop_reason == "t1" and float(sol.boundaries[-1]) == 0.5
    assert float(jnp.max(jnp.abs(sol.zs))) == 0.0
    assert "does not determine the squared weights" in sol.intrinsic_skipped
    assert sol.intervals[0].intrinsic_error is None
    assert "skipped" in sol.intervals[0].intrinsic_note


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_intervals=0), "`max_intervals` must be an integer ≥ 1; got 0"),
        (dict(max_intervals=-1), "`max_intervals` must be an integer ≥ 1; got -1"),
        (dict(saves=1), "`saves` must be an integer ≥ 2; got 1"),
        (dict(t1=0.0), "`t1` must be a finite number > 0; got 0.0"),
        (dict(t1=float("nan")), "`t1` must be a finite number > 0"),
        (dict(rtol=0.0), "`rtol` must be a finite number > 0"),
        (dict(max_steps=0), "`max_steps` must be an integer ≥ 1"),
        (dict(convention="relu"), "`convention` must be one of"),
    ],
)
def test_train_rejects_bad_arguments_before_computing(kwargs, match):
    args = dict(t1=1.0)
    args.update(kwargs)
    t1 = args.pop("t1")
    with pytest.raises(ValueError, match=f"train: {match}"):
        relu.train(_one_neuron(), _X, _Y, t1, **args)


def test_train_rejects_non_finite_data():
    with pytest.raises(ValueError, match="train: Y: entry 0 holds non-finite"):
        relu.train(_one_neuron(), _X, _Y.at[0, 0].set(jnp.nan), 1.0)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_recover_squares_refuses_non_finite_h0(bad):
    # Before: finite, wrong squares. Eagerly a ValueError; under jit the runtime error.
    net = relu.MLP([jnp.asarray([[1.0, 2.0], [0.5, -1.0]]), jnp.asarray([[1.0, -2.0]])])
    z, h0 = net.lift(), relu.conservation_laws(net).at[1].set(bad)
    with pytest.raises(ValueError, match="recover_squares: h0 holds non-finite values"):
        relu.recover_squares(z, h0, net.arch)
    with pytest.raises(Exception, match="h0 holds non-finite values"):
        jax.jit(relu.recover_squares, static_argnums=2)(z, h0, net.arch)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rtol=0.0), "`rtol` must be a number in \\(0, 1\\).*got 0.0"),
        (dict(rtol=float("nan")), "`rtol` must be a number in \\(0, 1\\)"),
        (dict(max_steps=0), "`max_steps` must be a positive integer.*got 0"),
        (dict(max_steps=-3), "`max_steps` must be a positive integer"),
    ],
)
def test_recover_squares_rejects_bad_solver_options(kwargs, match):
    # Before: "did not converge ... ill-conditioned" for arguments that can never converge.
    net = relu.MLP([jnp.asarray([[1.0, 2.0], [0.5, -1.0]]), jnp.asarray([[1.0, -2.0]])])
    z, h0 = net.lift(), relu.conservation_laws(net)
    with pytest.raises(ValueError, match=f"recover_squares: {match}"):
        relu.recover_squares(z, h0, net.arch, **kwargs)
    with pytest.raises(ValueError, match=f"intrinsic_kernel: {match}"):
        relu.intrinsic_kernel(z, h0, net.arch, **kwargs)


@pytest.mark.parametrize("tiny", [1e-15, 1e-12, 1e-9])
def test_recover_squares_with_an_edge_only_on_tiny_paths(tiny):
    # A bias crossing zero along training (met by `make relu`'s mlp_3_layers): its edge lies
    # only on paths of size ~tiny. lstsq truncated that direction with the rescalings and
    # returned θ_e² = 1, so K(z, h0) was 16% off M(θ). Oracle: the network's own weights;
    # 1e-10 relative to max θ² as in `test_recover_squares_returns_the_weights_of_the_network`.
    U1 = jnp.asarray([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.4]])
    U2 = jnp.asarray([[0.9, -0.6, 0.5], [0.2, 0.7, -1.1]])
    net = relu.MLP([U1, U2], [jnp.asarray([tiny, 0.4, -0.3]), jnp.asarray([0.1, -0.2])])
    z, h0 = net.lift(), relu.conservation_laws(net)
    sq, true = relu.recover_squares(z, h0, net.arch), net.edge_weights() ** 2
    assert float(jnp.max(jnp.abs(sq - true)) / jnp.max(true)) < 1e-10
    K, M = relu.intrinsic_kernel(z, h0, net.arch), relu.metric_matrix(net)
    assert float(jnp.linalg.norm(K - M) / jnp.linalg.norm(M)) < 1e-10
