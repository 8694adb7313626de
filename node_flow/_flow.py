"""Training flows: the parameter-space gradient flow and the intrinsic flow of $z$.

Each builds a vector field and what to save, and calls the one flow core
(`node_flow._integrate.integrate`): the state is flattened to one vector (so a deep
network is one array for the solver, not one leaf per layer), $z$ and the loss are
computed only at the save times, and failures are reported as a [`node_flow.RESULTS`][].
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike

from ._checks import (
    check_finite,
    check_max_steps,
    check_model,
    check_positive,
    check_real,
    check_scalar_loss,
    check_times,
    check_tolerances,
    is_concrete,
)
from ._custom_types import Kernel, Loss, ScalarLike
from ._integrate import finish, FlowError as FlowError, integrate, Options
from ._lifting import precondition, reverse_mode
from ._solution import FlowSolution


def as_float(x):
    """A floating scalar for the jitted solve: traced, so new values do not recompile.
    NumPy on the host when concrete (no eager JAX dispatch)."""
    dtype = jnp.result_type(float)
    if isinstance(x, jax.Array):
        return x.astype(dtype) if x.dtype != dtype else x
    return np.asarray(x, dtype=dtype)


def flow_options(fname: str, args: dict[str, Any]) -> tuple[Options, Any, Any, Any, Any]:
    """Validate the arguments every flow shares (before any solve) and group them.

    `args`: the flow's arguments by name (its `locals()`). Returns `(options, ts, t0, t1,
    time_scale)`, the times and the scale as floating scalars for the jitted core."""
    event, t0, t1, dt0, target = (
        args["event"],
        args["t0"],
        args["t1"],
        args["dt0"],
        args["target_loss"],
    )
    if event is not None and not callable(event):
        raise TypeError(f"{fname}: `event` must be a callable (t, state) ↦ bool or real scalar.")
    ts = check_times(fname, t0, t1, args["ts"])
    check_tolerances(fname, args["rtol"], args["atol"])
    check_max_steps(fname, args["max_steps"])
    for name in (
        ("blowup", "time_scale")
        + ("dt0",) * (dt0 is not None)
        + (("target_loss",) * (target is not None))
    ):
        check_positive(fname, name, args[name])
    solver, adjoint = args["solver"], args["adjoint"]
    options = Options(
        solver=diffrax.Tsit5() if solver is None else solver,
        controller=args["stepsize_controller"],
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        rtol=as_float(args["rtol"]),
        atol=as_float(args["atol"]),
        blowup=as_float(args["blowup"]),
        dt0=None if dt0 is None else as_float(dt0),
        event=None,
        target_loss=None if target is None else as_float(target),
        progress_meter=args["progress_meter"],
        max_steps=args["max_steps"],
        dense=bool(args["dense"]),
        save_end=args["ts"] is None,
    )
    return options, ts, as_float(t0), as_float(t1), as_float(args["time_scale"])


class ParameterLift(eqx.Module):
    """The flat parameter vector ↦ the model, and ↦ z."""

    static: Any
    unravel: Callable = eqx.field(static=True)

    def model(self, y):
        return eqx.combine(self.unravel(y), self.static)

    def __call__(self, y):
        return self.model(y).lift()


class ParameterField(eqx.Module):
    r"""$y \mapsto (-\tau P^{-1}\nabla L,\ \langle \nabla L, \dot y\rangle,\ L)$."""

    lift: ParameterLift
    loss: Loss
    time_scale: Any

    def __call__(self, y):
        p = self.lift.unravel(y)
        static = self.lift.static
        # `reverse_mode`: the model's twin specialized for `jax.grad` (e.g. the fused
        # reverse pass of a deep linear network's product).
        value, grads = jax.value_and_grad(
            lambda p: self.loss(reverse_mode(eqx.combine(p, static)).lift())
        )(p)
        g = ravel_pytree(grads)[0]
        dy = -self.time_scale * ravel_pytree(precondition(eqx.combine(p, static), grads))[0]
        return dy, jnp.vdot(g, dy), value


class SaveParameters(eqx.Module):
    lift: ParameterLift
    loss: Loss
    save_models: bool = eqx.field(static=True)

    def __call__(self, y):
        z = self.lift(y)
        out = {"zs": z, "losses": self.loss(z)}
        if self.save_models:
            out["ys"] = y
        return out


class _ModelEvent(eqx.Module):
    event: Callable
    lift: ParameterLift

    def __call__(self, t, y):
        return self.event(t, self.lift.model(y))


@eqx.filter_jit
def _gradient_flow_core(params, static, loss, event, time_scale, t0, t1, ts, options, save_models):
    # Input checks at trace time: once per compilation, not on every call.
    check_scalar_loss(
        "gradient_flow", loss, jax.eval_shape(lambda: eqx.combine(params, static).lift())
    )
    y0, unravel = ravel_pytree(params)
    lift = ParameterLift(static, unravel)
    if event is not None:
        options = dataclasses.replace(options, event=_ModelEvent(event, lift))
    field = ParameterField(lift, loss, time_scale)
    raw = integrate(field, SaveParameters(lift, loss, save_models), y0, t0, t1, ts, options)
    ys = raw[1].get("ys")
    models = None if ys is None else eqx.combine(jax.vmap(unravel)(ys), static)
    return raw, models, lift


def gradient_flow(
    model: Any,
    loss: Loss,
    t1: ScalarLike,
    *,
    ts: ArrayLike | None = None,
    t0: ScalarLike = 0.0,
    rtol: ScalarLike = 1e-8,
    atol: ScalarLike = 1e-8,
    time_scale: ScalarLike = 1.0,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    dt0: ScalarLike | None = None,
    max_steps: int | None = 100_000,
    blowup: ScalarLike = 1e8,
    event: Callable[[Any, Any], Any] | None = None,
    target_loss: ScalarLike | None = None,
    throw: bool = True,
    save_models: bool = True,
    dense: bool = False,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
) -> FlowSolution:
    r"""Train `model` by gradient flow on `loss(model.lift())`.

    Integrates $\dot\theta = -\tau\, P^{-1} \nabla_\theta \ell(\varphi(\theta))$ on
    $[t_0, t_1]$, with $\tau$ = `time_scale` and $P$ the model's training metric (the
    identity for a plain parameter vector; see [`node_flow.AbstractLifting`][]). The
    parameters are the inexact-array leaves of `model`; the gradient is taken by reverse
    mode through `model.lift()`. The whole solve (adaptive steps, `diffrax.Tsit5` with a
    PID controller by default) is one jit-compiled function: calling again with new arrays
    of the same shapes reuses the compilation.

    For a [`node_flow.LinearNeuralODE`][] this is the $L^2$ gradient flow
    $\partial_t A = -\nabla_A L$ of its weight function (refining the grid does not change
    the speed), and the gradient is taken by reverse mode *through the inner diffrax solve*
    of the forward ODE with `diffrax.RecursiveCheckpointAdjoint` (discretize-then-optimize):
    it is the exact gradient of the computed $z$, so the lifted flow obeys
    $\dot z = -M\nabla\ell$ to solver tolerance, with memory logarithmic in the number of
    inner steps; a backsolve adjoint would add its own integration error.

    **Differentiating the flow.** The outputs can be differentiated (`jax.grad`) with
    respect to the initial model, data inside `loss`, `time_scale` and the times. The
    default `adjoint=diffrax.RecursiveCheckpointAdjoint()` backpropagates through the
    solver's own operations: the gradient is the exact derivative of the *computed*
    solution (it matches finite differences of the solve to rounding), at memory
    logarithmic in the number of steps. `diffrax.BacksolveAdjoint` would solve an adjoint
    ODE backwards, adding a second integration error (and does not support events).

    **Failures** are never silent: invalid arguments raise a `ValueError` before any
    solve; a failed solve raises a [`node_flow.FlowError`][] (`throw=True`; under `jit`
    every output carries an `eqx.error_if` with the same message) or is reported in
    `.result`: `max_steps_reached`, `dt_min_reached` (the step size collapsed: a finite-time
    singularity or extreme stiffness), `blew_up`, `loss_increased` (the loss rose by more
    than 10(atol + rtol |ℓ(z₀)|) in total: not a descent flow), `nonfinite_gradient`,
    `nonfinite_loss`, `invalid_input` (traced times that are invalid).

    **Arguments:**

    - `model`: any `eqx.Module` with a `.lift()` method and real parameters.
    - `loss`: any callable `z ↦ scalar` (e.g. [`node_flow.LeastSquares`][]).
    - `t1`: final training time, finite and greater than `t0`.
    - `ts`: the times to save at (default `[t0, t1]`): 1-D, finite, non-decreasing, in
      `[t0, t1]` (a round-off overshoot of the end points is clipped).
    - `rtol`, `atol`: tolerances of the default step-size controller, `rtol` in $(0, 1)$,
      `atol` $> 0$ (with float32, `rtol` below 10 machine epsilons warns).
    - `time_scale`: the learning rate $\tau > 0$ multiplying the gradient.
    - `solver`: a diffrax solver (default `diffrax.Tsit5()`).
    - `stepsize_controller`: a diffrax controller (default: `diffrax.PIDController` with
      `rtol`, `atol` and a step-size floor at the resolution of time, `force_dtmin=False`).
      Adaptive controllers are guarded so that a non-finite trial step shrinks the step.
    - `adjoint`: a diffrax adjoint (default `diffrax.RecursiveCheckpointAdjoint()`, see above).
    - `dt0`: the first step (default: chosen from the vector field, Hairer–Nørsett–Wanner).
    - `max_steps`: a positive integer bounding the solve (`None` is refused).
    - `blowup`: the flow is declared blown up (`RESULTS.blew_up`) when
      $\max|\theta|$ exceeds `blowup · max(1, max|θ(t0)|)` or becomes non-finite.
    - `event`: optional `(t, model) ↦ bool or real scalar`; the solve stops when it
      becomes true or changes sign (`RESULTS.event_occurred`, time in `.t_final`). The
      time of a real-valued event is located by bisection on the step's interpolant to
      relative accuracy 1e-12 (a boolean one stops at the end of the step).
    - `target_loss`: optional $\ell^\star > 0$: the solve stops at the first time
      $\ell(z(t)) \le \ell^\star$, a success: `.result` is `RESULTS.event_occurred`,
      `.target_reached` is true and `.t_final` is that time (located as an event's; `t0`
      when $\ell(z_0) \le \ell^\star$). It costs one loss evaluation per step. With a
      user `event` too, the first of the two stops the solve (if both occur within one
      solver step, the target's time is taken). Save times after the stop hold `inf`;
      without `ts`, the last save is the stopping point.
    - `throw`: raise a `FlowError` naming the failure; with `throw=False` the failure is
      reported in `.result`.
    - `save_models`: keep the parameters at every save time (`.models`); `False` keeps
      only `z` and the loss (`.models` is `None`).
    - `dense`: keep the solver's dense output, so that
      [`node_flow.FlowSolution.evaluate`][] gives $z(t)$ at any time. Its buffers hold
      `max_steps` steps: lower `max_steps` when the state is large.
    - `progress_meter`: a diffrax progress meter.

    **Returns:** a [`node_flow.FlowSolution`][] with `.ts`, `.zs`, `.losses`, `.models`,
    `.stats` and `.result`.
    """
    fname = "gradient_flow"
    params, static = check_model(fname, model)
    options, ts, t0, t1, scale = flow_options(fname, locals())
    raw, models, lift = _gradient_flow_core(
        params, static, loss, event, scale, t0, t1, ts, options, save_models
    )
    return finish(fname, raw, models, lift, t0, t1, throw)


class _IntrinsicField(eqx.Module):
    r"""$z \mapsto (-\tau K(z)\nabla\ell,\ \langle\nabla\ell, \dot z\rangle,\ \ell)$."""

    loss: Loss
    kernel: Kernel
    time_scale: Any

    def __call__(self, z):
        value, g = jax.value_and_grad(self.loss)(z)
        dz = -self.time_scale * self.kernel(z, g)
        return dz, jnp.vdot(g, dz), value


class _SaveZ(eqx.Module):
    loss: Loss

    def __call__(self, z):
        return {"zs": z, "losses": self.loss(z)}


class _ZEvent(eqx.Module):
    event: Callable

    def __call__(self, t, z):
        return self.event(t, z)


@eqx.filter_jit
def _intrinsic_flow_core(z0, loss, kernel, event, time_scale, t0, t1, ts, options):
    # `loss` and `kernel` were checked by `intrinsic_flow` (which a user's `jit` traces too).
    if event is not None:
        options = dataclasses.replace(options, event=_ZEvent(event))
    field = _IntrinsicField(loss, kernel, time_scale)
    return integrate(field, _SaveZ(loss), z0, t0, t1, ts, options)


@eqx.filter_jit
def _initial_descent(z0, loss, kernel):
    """(⟨∇ℓ, K∇ℓ⟩, |∇ℓ| |K∇ℓ|) at z0."""
    g = jax.grad(loss)(z0)
    kg = kernel(z0, g)
    return jnp.stack([jnp.vdot(g, kg), jnp.linalg.norm(g) * jnp.linalg.norm(kg)])


# ⟨∇ℓ, K∇ℓ⟩ below −this·|∇ℓ||K∇ℓ| is a non-descent kernel, not rounding.
_DESCENT_RTOL = 1e-10


def _check_kernel(fname, z0, loss, kernel):
    """`kernel` a callable returning an array of z's shape; refuse a kernel that is not
    positive semi-definite along ∇ℓ at z0 (when z0, loss and kernel are concrete)."""
    if not callable(kernel):
        raise TypeError(f"{fname}: `kernel` must be a callable (z, G) ↦ K(z)[G].")
    out = jax.eval_shape(kernel, z0, z0)
    if getattr(out, "shape", None) != z0.shape:
        raise ValueError(
            f"{fname}: `kernel(z, G)` must return an array of z's shape {z0.shape}; "
            f"got {getattr(out, 'shape', type(out).__name__)}."
        )
    if not (is_concrete(z0) and all(is_concrete(x) for x in jax.tree.leaves((loss, kernel)))):
        return
    inner, scale = np.asarray(_initial_descent(z0, loss, kernel))
    if inner < -_DESCENT_RTOL * scale:
        raise ValueError(
            f"{fname}: the kernel is not a descent direction at z0: "
            f"⟨∇ℓ, K(z0)∇ℓ⟩ = {inner:.6g} < 0, so the loss would increase. The kernel "
            "must be positive semi-definite (check its sign: the flow is ż = −K(z)∇ℓ(z))."
        )


def intrinsic_flow(
    z0: ArrayLike,
    loss: Loss,
    kernel: Kernel,
    t1: ScalarLike,
    *,
    ts: ArrayLike | None = None,
    t0: ScalarLike = 0.0,
    rtol: ScalarLike = 1e-8,
    atol: ScalarLike = 1e-8,
    time_scale: ScalarLike = 1.0,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    dt0: ScalarLike | None = None,
    max_steps: int | None = 100_000,
    blowup: ScalarLike = 1e8,
    event: Callable[[Any, Any], Any] | None = None,
    target_loss: ScalarLike | None = None,
    throw: bool = True,
    dense: bool = False,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
) -> FlowSolution:
    r"""Integrate the intrinsic flow $\dot z = -\tau\, K(z)[\nabla \ell(z)]$ on $[t_0, t_1]$.

    This is the flow the lifted variable follows on its own when the intrinsic dynamic
    property holds (THEORY §1): dimension $d$ instead of $D$. The kernel must be positive
    semi-definite: an initial $\langle\nabla\ell, K\nabla\ell\rangle < 0$ is refused
    (`ValueError`), and an increase of the loss along the flow beyond the solver tolerance
    is reported as `RESULTS.loss_increased`.

    **Arguments:**

    - `z0`: the initial lifted variable (a real floating array).
    - `loss`: any callable `z ↦ scalar`.
    - `kernel`: a callable `(z, G) ↦ K(z)[G]`, e.g.
      `lambda z, G: node_flow.kernels.balanced(z, G, depth)`. To vary kernel parameters
      without recompiling, pass an `eqx.Module` or `jax.tree_util.Partial` holding them as
      arrays, e.g. `jax.tree_util.Partial(kernels.relaxed_balanced, lambdas=lam)`.
    - the remaining options as in [`node_flow.gradient_flow`][] (`event` receives `(t, z)`).

    **Returns:** a [`node_flow.FlowSolution`][] (`.models` is `None`).
    """
    fname = "intrinsic_flow"
    check_real(f"{fname}: z0", z0)
    z0 = jnp.asarray(z0)
    if not jnp.issubdtype(z0.dtype, jnp.floating):
        raise TypeError(f"{fname}: `z0` must be a real floating array; got {z0.dtype}.")
    check_finite(f"{fname}: z0", z0)
    options, ts, t0, t1, scale = flow_options(fname, locals())
    check_scalar_loss(fname, loss, jax.ShapeDtypeStruct(z0.shape, z0.dtype))
    _check_kernel(fname, z0, loss, kernel)
    raw = _intrinsic_flow_core(z0, loss, kernel, event, scale, t0, t1, ts, options)
    return finish(fname, raw, None, None, t0, t1, throw)
