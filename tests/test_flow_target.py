"""`target_loss`: the flows stop at the first time the loss reaches a threshold.

Checked on the balanced scalar mode of a two-layer network (Saxe et al. 2014, eq. 11–12;
REFERENCES): with z = w₂w₁, w₁ = w₂ and ℓ = ½(z − s)² the flow is z' = 2z(s − z), so
ℓ = ℓ* is reached at z* = s − √(2ℓ*) at the closed-form time
t* = ln[z*(s − z₀) / (z₀(s − z*))] / (2s).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import node_flow as nf


S, Z0 = 2.0, 0.01
TOL = dict(rtol=1e-10, atol=1e-10)
TARGETS = (1e-2, 1e-4, 1e-6)


def _kernel(z, G):
    """The two-layer balanced kernel of a scalar: K(z)G = 2|z|G (here z > 0)."""
    return 2 * z * G


def _at_time(t_event, t, z):
    return t - t_event


def _scalar_mode():
    w = jnp.full((1, 1), Z0**0.5)
    return nf.LinearNetwork((w, w)), nf.LeastSquares(jnp.ones((1, 1)), jnp.full((1, 1), S))


def _closed_form(target):
    """(z*, t*, z'(t*)) of the logistic mode z' = 2z(s − z) at loss ½(z − s)² = target."""
    z = S - np.sqrt(2 * target)
    t = np.log(z * (S - Z0) / (Z0 * (S - z))) / (2 * S)
    return z, t, 2 * z * (S - z)


def _time_bound(target):
    """The stop time is off by the solver's error in z at that time divided by the speed
    z': rtol·|z| per step, ×10 for the global error of this contracting flow, plus the
    bisection's 1e-12 relative accuracy (far below)."""
    z, t, speed = _closed_form(target)
    return 10 * TOL["rtol"] * abs(z) / speed + 1e-12 * t


def test_target_loss_stops_both_flows_at_the_closed_form_time():
    """For three thresholds (one compilation per flow: the target is traced), the
    parameter flow and the intrinsic flow (kernel K(z)G = 2zG) stop with success at the
    closed-form time t* (bound: `_time_bound`); the loss is ≤ the target there, and a
    target already met at t0 stops at t0 with the initial point saved."""
    net, loss = _scalar_mode()
    z0 = net.lift()
    for target in TARGETS:
        _, t_star, _ = _closed_form(target)
        param = nf.gradient_flow(net, loss, 20.0, target_loss=target, dense=True, **TOL)
        intr = nf.intrinsic_flow(z0, loss, _kernel, 20.0, target_loss=target, **TOL)
        for sol in (param, intr):
            assert sol.result == nf.RESULTS.event_occurred and bool(sol.target_reached)
            assert abs(float(sol.t_final) - t_star) <= _time_bound(target)
        # the loss at the stop time, from the dense output (independent of the root find)
        z_stop = param.evaluate(param.t_final)
        assert float(loss(z_stop)) <= target * (1 + 1e-6)
        # without `ts` the last save is the stopping point: z* of the closed form, to the
        # solver's global error (10 rtol |z*|, as in `_time_bound`) plus the speed times
        # the time error
        z_star, _, speed = _closed_form(target)
        for sol in (param, intr):
            assert float(sol.ts[-1]) == float(sol.t_final)
            bound = 10 * TOL["rtol"] * z_star + speed * _time_bound(target)
            assert abs(float(sol.zs[-1].squeeze()) - z_star) <= bound
    start = nf.gradient_flow(net, loss, 20.0, target_loss=10.0, dense=True, **TOL)
    assert bool(start.target_reached) and float(start.t_final) == 0.0
    assert float(start.ts[0]) == 0.0 and float(start.losses[0]) == float(loss(z0))


def test_target_loss_composes_with_a_user_event():
    """Whichever comes first stops the solve: an event at t = 1 before the target (not
    reached: `target_reached` false, stop at 1 to bisection accuracy), the target before
    an event at t = 10 (stop at t*). A target not reached by t1 ends successfully at t1."""
    net, loss = _scalar_mode()
    target = TARGETS[1]
    _, t_star, _ = _closed_form(target)

    def run(t_event, t1=20.0):  # one compilation: the event time and t1 are data
        event = Partial(_at_time, jnp.asarray(t_event))
        z0 = net.lift()
        return nf.intrinsic_flow(z0, loss, _kernel, t1, event=event, target_loss=target, **TOL)

    early = run(1.0)
    assert early.result == nf.RESULTS.event_occurred and not bool(early.target_reached)
    assert abs(float(early.t_final) - 1.0) <= 1e-11
    late = run(10.0)
    assert bool(late.target_reached) and abs(float(late.t_final) - t_star) <= _time_bound(target)
    short = run(10.0, t1=1.5)
    assert short.result == nf.RESULTS.successful and not bool(short.target_reached)
    assert float(short.t_final) == 1.5


def test_gradient_descent_stops_at_the_first_iterate_below_target():
    """Gradient descent with `target_loss` stops at the first iterate k with
    ½(z_k − s)² ≤ target, the same k as a hand-written NumPy recursion of the two scalar
    weights (exact integer), and reports success."""
    net, loss = _scalar_mode()
    lr, target = 1e-2, TARGETS[1]
    sol = nf.gradient_descent(net, loss, lr, 2000, target_loss=target, save_every=100)
    w1 = w2 = Z0**0.5
    k = 0
    while 0.5 * (w2 * w1 - S) ** 2 > target:
        r = w2 * w1 - S
        w1, w2 = w1 - lr * w2 * r, w2 - lr * w1 * r
        k += 1
    assert sol.result == nf.RESULTS.successful and bool(sol.target_reached)
    assert int(sol.stats["num_steps"]) == k
    # 1e-9: the rounding of a few hundred float64 steps, summed in a different order
    assert float(sol.losses[-1]) == pytest.approx(0.5 * (w2 * w1 - S) ** 2, rel=1e-9)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_target_loss_must_be_positive_and_finite(bad):
    net, loss = _scalar_mode()
    for call in (
        lambda: nf.gradient_flow(net, loss, 1.0, target_loss=bad),
        lambda: nf.intrinsic_flow(net.lift(), loss, lambda z, G: G, 1.0, target_loss=bad),
        lambda: nf.gradient_descent(net, loss, 0.1, 10, target_loss=bad),
    ):
        with pytest.raises(ValueError, match="target_loss` must be positive and finite"):
            call()
