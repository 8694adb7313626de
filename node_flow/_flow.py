"""Training flows: the parameter-space gradient flow and the intrinsic flow of $z$.

Both are thin, jit-compiled wrappers over `diffrax.diffeqsolve` sharing `_integrate`:
the state is flattened to one vector (so a deep network is one array for the solver, not
one leaf per layer), $z$ and the loss are computed only at the save times, a boolean
event stops a flow that blows up, and failures are reported as a [`node_flow.RESULTS`][].
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike

from ._checks import check_finite
from ._custom_types import Kernel, Loss, ScalarLike
from ._lifting import precondition, reverse_mode
from ._solution import FlowSolution, RESULTS


class FlowError(RuntimeError):
    """A training flow failed: the solver hit `max_steps`, the flow blew up, or the
    vector field was not finite. The message says which and where."""


def _num_vf_evals(solver, num_steps):
    if isinstance(solver, diffrax.AbstractRungeKutta) and isinstance(
        solver.tableau, diffrax.ButcherTableau
    ):
        fsal = int(solver.tableau.fsal)
        return num_steps * (solver.tableau.num_stages - fsal) + fsal
    return -1 + 0 * num_steps


def _check_scalar_loss(fname: str, loss: Loss, z: jax.ShapeDtypeStruct) -> None:
    if not callable(loss):
        raise TypeError(f"{fname}: `loss` must be a callable z ↦ scalar; got {type(loss)}.")
    out = jax.eval_shape(loss, z)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise TypeError(f"{fname}: `loss` must return a scalar; it returned shape {shape}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{fname}: `loss` must return a floating scalar; got {out.dtype}.")


def _times(fname, t0, t1, ts):
    # Host-side (NumPy) when concrete: eager JAX ops cost tens of µs each, which is the
    # whole budget of a small solve.
    dtype = jnp.result_type(float)
    if ts is None:
        if any(isinstance(t, jax.core.Tracer) for t in (t0, t1)):
            return jnp.stack([jnp.asarray(t0, dtype=dtype), jnp.asarray(t1, dtype=dtype)])
        return np.array([t0, t1], dtype=dtype)
    if isinstance(ts, jax.core.Tracer):
        if ts.ndim != 1 or ts.size == 0:
            raise ValueError(f"{fname}: `ts` must be a non-empty 1-D array of times.")
        return ts.astype(dtype)
    ts_np = np.asarray(ts, dtype=dtype)
    if ts_np.ndim != 1 or ts_np.size == 0:
        raise ValueError(f"{fname}: `ts` must be a non-empty 1-D array of times.")
    if np.any(np.diff(ts_np) < 0) or ts_np[0] < float(t0) or ts_np[-1] > float(t1):
        raise ValueError(f"{fname}: `ts` must be non-decreasing and lie within [t0, t1].")
    return ts_np


@eqx.filter_jit
def _integrate(
    vector_field,
    save_fn,
    event_fn,
    y0,
    args,
    t0,
    t1,
    ts,
    rtol,
    atol,
    blowup,
    *,
    solver,
    dt0,
    max_steps,
    progress_meter,
):
    """Solve $y' = f(t, y)$; returns (ts, save_fn outputs at ts, t_final, stats, result)."""
    term = diffrax.ODETerm(vector_field)
    # A step-size floor turns a stalled solve (finite-time singularity, extreme
    # stiffness) into `dt_min_reached` instead of burning through `max_steps`.
    dtmin = 1e-13 * (t1 - t0)
    controller = diffrax.PIDController(rtol=rtol, atol=atol, dtmin=dtmin)
    scale0 = jnp.maximum(1.0, jnp.max(jnp.abs(y0)))

    def blew_up(t, y, args, **kwargs):
        return jnp.logical_or(jnp.any(~jnp.isfinite(y)), jnp.max(jnp.abs(y)) > blowup * scale0)

    if event_fn is None:
        # Boolean conditions need no root finder (the solve stops at the end of the
        # step); leaving it out saves about a second of compile time.
        event = diffrax.Event((blew_up,))
    else:
        event = diffrax.Event((blew_up, event_fn), root_finder=optx.Newton(rtol=1e-10, atol=1e-12))
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts, fn=save_fn),
            diffrax.SubSaveAt(t1=True, fn=lambda t, y, args: t),
        ]
    )
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=controller,
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=progress_meter,
    )
    saved, t_final = sol.ys
    ts_saved = sol.ts[0]
    result = RESULTS.promote(sol.result)
    result = RESULTS.where(sol.event_mask[0], RESULTS.blew_up, result)
    num_steps = sol.stats["num_steps"]
    stats = {
        "num_steps": num_steps,
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        "num_vf_evals": _num_vf_evals(solver, num_steps),
    }
    return ts_saved, saved, t_final[0], stats, result


_HINTS = {
    RESULTS[RESULTS.dt_min_reached]: (
        " The step size collapsed below 1e-13·(t1 − t0): the flow has a finite-time "
        "singularity (blow-up) or is extremely stiff there."
    ),
    RESULTS[RESULTS.max_steps_reached]: (
        " Long plateaus (small initializations) need many steps: raise `max_steps`, "
        "or loosen rtol/atol."
    ),
}


def _finish(fname, ts, zs, losses, t_final, stats, result, models, t0, t1, throw, initial_vf):
    if isinstance(result._value, jax.core.Tracer):
        ok = (result == RESULTS.successful) | (result == RESULTS.event_occurred)
    else:  # one host transfer instead of eager comparisons
        code = int(np.asarray(result._value))
        ok = code in (int(RESULTS.successful._value), int(RESULTS.event_occurred._value))
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        # Diagnose a failure: a non-finite vector field at the start makes every step
        # fail, which the solver would only report as `max_steps` or `dt_min`.
        if not bool(jnp.all(jnp.isfinite(initial_vf()))):
            result = RESULTS.nonfinite_gradient
    if throw:
        if isinstance(ok, jax.core.Tracer):
            zs = result.error_if(zs, ~ok)
        elif not bool(ok):
            hint = _HINTS.get(RESULTS[result], "")
            raise FlowError(
                f"{fname}: {RESULTS[result]}{hint} Stopped at t = {float(t_final):.6g} of "
                f"[{float(t0):.6g}, {float(t1):.6g}] after {int(stats['num_steps'])} steps."
            )
    return FlowSolution(
        ts=ts,
        zs=zs,
        losses=losses,
        models=models,
        stats=stats,
        result=result,
        t_final=t_final,
    )


def _event_or_none(event, wrap):
    if event is None:
        return None
    if not callable(event):
        raise TypeError("`event` must be a callable (t, state) ↦ bool or real scalar.")
    return wrap


def _as_float(x):
    """A floating scalar for the jitted solve: traced, so new values do not recompile.
    NumPy on the host when concrete (no eager JAX dispatch)."""
    dtype = jnp.result_type(float)
    if isinstance(x, jax.Array):
        return x.astype(dtype) if x.dtype != dtype else x
    return np.asarray(x, dtype=dtype)


@eqx.filter_jit
def _euclidean_gradient(params, static, loss):
    grads = jax.grad(lambda p: loss(reverse_mode(eqx.combine(p, static)).lift()))(params)
    return ravel_pytree(grads)[0]


@eqx.filter_jit
def _intrinsic_vf(z, loss, kernel):
    return kernel(z, jax.grad(loss)(z))


@eqx.filter_jit
def _gradient_flow_impl(
    params,
    static,
    loss,
    event,
    time_scale,
    t0,
    t1,
    ts,
    rtol,
    atol,
    blowup,
    *,
    solver,
    dt0,
    max_steps,
    progress_meter,
):
    # Input checks at trace time: once per compilation, not on every call.
    _check_scalar_loss(
        "gradient_flow", loss, jax.eval_shape(lambda: eqx.combine(params, static).lift())
    )
    y0, unravel = ravel_pytree(params)
    model_of = lambda y: eqx.combine(unravel(y), static)

    # diffrax traces the vector field and the save function several times (solver
    # init, the stages, saving, events). Jitted closures are traced once and reused,
    # which matters when `lift` is itself a diffrax solve (the neural ODE).
    @eqx.filter_jit
    def flat_gradient(y, loss):
        p = unravel(y)
        # `reverse_mode`: the model's twin specialized for `jax.grad` (e.g. the fused
        # reverse pass of a deep linear network's product).
        grads = jax.grad(lambda p: loss(reverse_mode(eqx.combine(p, static)).lift()))(p)
        return ravel_pytree(precondition(eqx.combine(p, static), grads))[0]

    @eqx.filter_jit
    def lift_and_loss(y, loss):
        z = model_of(y).lift()
        return z, loss(z)

    vector_field = lambda t, y, args: -time_scale * flat_gradient(y, loss)
    save_fn = lambda t, y, args: (y, lift_and_loss(y, loss))

    event_fn = _event_or_none(event, lambda t, y, args, **kw: event(t, model_of(y)))
    ts, (ys, (zs, losses)), t_final, stats, result = _integrate(
        vector_field,
        save_fn,
        event_fn,
        y0,
        None,
        t0,
        t1,
        ts,
        rtol,
        atol,
        blowup,
        solver=solver,
        dt0=dt0,
        max_steps=max_steps,
        progress_meter=progress_meter,
    )
    models = eqx.combine(jax.vmap(unravel)(ys), static)
    return ts, zs, losses, t_final, stats, result, models


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
    dt0: ScalarLike | None = None,
    max_steps: int = 100_000,
    blowup: ScalarLike = 1e8,
    event: Callable[[Any, Any], Any] | None = None,
    throw: bool = True,
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

    **Arguments:**

    - `model`: any `eqx.Module` with a `.lift()` method.
    - `loss`: any callable `z ↦ scalar` (e.g. [`node_flow.LeastSquares`][]).
    - `t1`: final training time.
    - `ts`: the times to save at (default `[t0, t1]`).
    - `rtol`, `atol`: tolerances of the step-size controller.
    - `time_scale`: the learning rate $\tau$ multiplying the gradient.
    - `solver`, `dt0`, `max_steps`, `progress_meter`: passed to `diffrax.diffeqsolve`.
    - `blowup`: the flow is declared blown up (`RESULTS.blew_up`) when
      $\max|\theta|$ exceeds `blowup · max(1, max|θ(t0)|)` or becomes non-finite.
    - `event`: optional `(t, model) ↦ bool or real scalar`; the solve stops when it
      becomes true or changes sign (`RESULTS.event_occurred`, time in `.t_final`).
    - `throw`: raise a `FlowError` naming the failure (max_steps reached, blow-up,
      non-finite gradient); with `throw=False` the failure is reported in `.result`.

    **Returns:** a [`node_flow.FlowSolution`][] with `.ts`, `.zs`, `.losses`, `.models`,
    `.stats` and `.result`.
    """
    fname = "gradient_flow"
    if not isinstance(model, eqx.Module) or not callable(getattr(model, "lift", None)):
        raise TypeError(f"{fname}: `model` must be an eqx.Module with a `.lift()` method.")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if not jax.tree.leaves(params):
        raise ValueError(f"{fname}: `model` has no floating-point parameters to train.")
    check_finite(f"{fname}: the initial model", params)
    ts = _times(fname, t0, t1, ts)
    t0, t1 = _as_float(t0), _as_float(t1)
    ts, zs, losses, t_final, stats, result, models = _gradient_flow_impl(
        params,
        static,
        loss,
        event,
        _as_float(time_scale),
        t0,
        t1,
        ts,
        _as_float(rtol),
        _as_float(atol),
        _as_float(blowup),
        solver=diffrax.Tsit5() if solver is None else solver,
        dt0=dt0,
        max_steps=max_steps,
        progress_meter=progress_meter,
    )
    initial_vf = lambda: _euclidean_gradient(params, static, loss)
    return _finish(fname, ts, zs, losses, t_final, stats, result, models, t0, t1, throw, initial_vf)


@eqx.filter_jit
def _intrinsic_flow_impl(
    z0,
    loss,
    kernel,
    event,
    time_scale,
    t0,
    t1,
    ts,
    rtol,
    atol,
    blowup,
    *,
    solver,
    dt0,
    max_steps,
    progress_meter,
):
    # Input checks at trace time: once per compilation, not on every call.
    _check_scalar_loss("intrinsic_flow", loss, jax.ShapeDtypeStruct(z0.shape, z0.dtype))
    out = jax.eval_shape(kernel, z0, z0)
    if getattr(out, "shape", None) != z0.shape:
        raise ValueError(
            f"intrinsic_flow: `kernel(z, G)` must return an array of z's shape {z0.shape}; "
            f"got {getattr(out, 'shape', type(out).__name__)}."
        )

    def vector_field(t, z, args):
        return -time_scale * kernel(z, jax.grad(loss)(z))

    save_fn = lambda t, z, args: (z, loss(z))
    event_fn = _event_or_none(event, lambda t, z, args, **kw: event(t, z))
    return _integrate(
        vector_field,
        save_fn,
        event_fn,
        z0,
        None,
        t0,
        t1,
        ts,
        rtol,
        atol,
        blowup,
        solver=solver,
        dt0=dt0,
        max_steps=max_steps,
        progress_meter=progress_meter,
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
    dt0: ScalarLike | None = None,
    max_steps: int = 100_000,
    blowup: ScalarLike = 1e8,
    event: Callable[[Any, Any], Any] | None = None,
    throw: bool = True,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
) -> FlowSolution:
    r"""Integrate the intrinsic flow $\dot z = -\tau\, K(z)[\nabla \ell(z)]$ on $[t_0, t_1]$.

    This is the flow the lifted variable follows on its own when the intrinsic dynamic
    property holds (THEORY §1): dimension $d$ instead of $D$.

    **Arguments:**

    - `z0`: the initial lifted variable.
    - `loss`: any callable `z ↦ scalar`.
    - `kernel`: a callable `(z, G) ↦ K(z)[G]`, e.g.
      `lambda z, G: node_flow.kernels.balanced(z, G, depth)`. To vary kernel parameters
      without recompiling, pass an `eqx.Module` or `jax.tree_util.Partial` holding them as
      arrays, e.g. `jax.tree_util.Partial(kernels.relaxed_balanced, lambdas=lam)`.
    - the remaining options as in [`node_flow.gradient_flow`][] (`event` receives `(t, z)`).

    **Returns:** a [`node_flow.FlowSolution`][] (`.models` is `None`).
    """
    fname = "intrinsic_flow"
    z0 = jnp.asarray(z0)
    if not jnp.issubdtype(z0.dtype, jnp.floating):
        raise TypeError(f"{fname}: `z0` must be a floating array; got {z0.dtype}.")
    check_finite(f"{fname}: z0", z0)
    if not callable(kernel):
        raise TypeError(f"{fname}: `kernel` must be a callable (z, G) ↦ K(z)[G].")
    ts = _times(fname, t0, t1, ts)
    t0, t1 = _as_float(t0), _as_float(t1)
    ts, (zs, losses), t_final, stats, result = _intrinsic_flow_impl(
        z0,
        loss,
        kernel,
        event,
        _as_float(time_scale),
        t0,
        t1,
        ts,
        _as_float(rtol),
        _as_float(atol),
        _as_float(blowup),
        solver=diffrax.Tsit5() if solver is None else solver,
        dt0=dt0,
        max_steps=max_steps,
        progress_meter=progress_meter,
    )
    initial_vf = lambda: _intrinsic_vf(z0, loss, kernel)
    return _finish(fname, ts, zs, losses, t_final, stats, result, None, t0, t1, throw, initial_vf)
