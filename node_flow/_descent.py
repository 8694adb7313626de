r"""Gradient descent, the discrete-time flow: same models, metrics and losses as
[`node_flow.gradient_flow`][], same vector field, one `lax.scan`."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._checks import check_finite, check_max_steps, check_positive, check_real
from ._custom_types import Loss, ScalarLike
from ._flow import (
    as_float,
    check_lift_output,
    check_scalar_loss,
    ParameterField,
    ParameterLift,
    SaveParameters,
)
from ._integrate import raise_or_guard
from ._solution import DescentSolution, RESULTS


def _descent_scan(field, y0, eta, limit, target, num_steps, save_every, save):
    """Saves after every `save_every` steps (the last block may be partial). A step that
    meets a non-finite or exploding loss/state, or a loss ≤ `target`, is not taken and
    records its index; returns (saved, stop index or -1, whether the target stopped it)."""
    num_saves = -(-num_steps // save_every)

    def step(carry, k):
        y, stop_at, reached = carry
        dy, _, value = field(y)
        y_new = y + eta * dy
        hit = value <= target
        bad = ~(jnp.isfinite(value) & (value <= limit) & jnp.all(jnp.isfinite(y_new)))
        active = (k < num_steps) & (stop_at < 0)
        stop_at = jnp.where(active & (bad | hit), k, stop_at)
        reached = reached | (active & hit)
        y = jnp.where(active & ~bad & ~hit, y_new, y)
        return (y, stop_at, reached), None

    def block(carry, i):
        carry, _ = jax.lax.scan(step, carry, i * save_every + jnp.arange(save_every))
        return carry, save(carry[0])

    carry = (y0, jnp.asarray(-1), jnp.asarray(False))
    (y, stop_at, reached), saved = jax.lax.scan(block, carry, jnp.arange(num_saves))
    first = jax.tree.map(lambda x: x[None], save(y0))
    saved = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, saved)
    end = saved["losses"][-1]
    end_bad = ~(jnp.isfinite(end) & (end <= limit))
    fresh = stop_at < 0
    reached = reached | (fresh & ~end_bad & (end <= target))
    stop_at = jnp.where(fresh & (end_bad | (end <= target)), num_steps, stop_at)
    return saved, stop_at, reached


@eqx.filter_jit
def _descent_core(
    params, static, loss, lr, time_scale, blowup, target, num_steps, save_every, save_models
):
    check_scalar_loss(
        "gradient_descent", loss, jax.eval_shape(lambda: eqx.combine(params, static).lift())
    )
    y0, unravel = ravel_pytree(params)
    lift = ParameterLift(static, unravel)
    field = ParameterField(lift, loss, time_scale)
    save = SaveParameters(lift, loss, save_models)
    loss0 = field(y0)[2]
    limit = blowup * jnp.maximum(1.0, jnp.abs(loss0))
    bound = -jnp.inf if target is None else target
    saved, stop_at, reached = _descent_scan(
        field, y0, lr, limit, jnp.asarray(bound, loss0.dtype), num_steps, save_every, save
    )
    steps = jnp.minimum(save_every * jnp.arange(saved["losses"].shape[0]), num_steps)
    ys = saved.get("ys")
    models = None if ys is None else eqx.combine(jax.vmap(unravel)(ys), static)
    result = RESULTS.where((stop_at >= 0) & ~reached, RESULTS.diverged, RESULTS.successful)
    done = jnp.where(stop_at >= 0, stop_at, num_steps)
    ts = steps.astype(jnp.result_type(lr)) * (lr * time_scale)
    return steps, ts, saved, models, result, done, None if target is None else reached


def _check_count(fname, name, n):
    try:
        check_max_steps(fname, n)
    except ValueError:
        raise ValueError(f"{fname}: `{name}` must be a positive integer; got {n!r}.") from None


def gradient_descent(
    model: Any,
    loss: Loss,
    lr: ScalarLike,
    num_steps: int,
    *,
    save_every: int = 1,
    time_scale: ScalarLike = 1.0,
    blowup: ScalarLike = 1e8,
    throw: bool = True,
    save_models: bool = True,
    target_loss: ScalarLike | None = None,
) -> DescentSolution:
    r"""Train `model` by gradient descent on `loss(model.lift())`:
    $\theta_{k+1} = \theta_k - \eta\,\tau\, P^{-1}\nabla_\theta \ell(\varphi(\theta_k))$.

    $\eta$ = `lr`, $\tau$ = `time_scale` and $P$ the model's training metric, exactly as in
    [`node_flow.gradient_flow`][] (the same vector field): it is the explicit Euler
    discretization of that flow with step $\eta\tau$, so the iterate $k$ approximates the
    flow at $t_k = k\eta\tau$ with an $O(\eta)$ error. For a deep linear network
    $C_j = U_{j+1}^\top U_{j+1} - U_j U_j^\top$ changes by exactly
    $\eta^2\tau^2(G_{j+1}^\top G_{j+1} - G_j G_j^\top)$ per step. The whole loop is one
    jit-compiled `lax.scan`.

    **Arguments:**

    - `model`, `loss`: as [`node_flow.gradient_flow`][].
    - `lr`: the step $\eta > 0$; `num_steps`: a positive integer.
    - `save_every`: save $z$, the loss (and the model) every this many steps; the last
      save is always step `num_steps`.
    - `time_scale`: $\tau > 0$, as in the flow.
    - `blowup`: diverged when the loss exceeds `blowup · max(1, |ℓ(z_0)|)` or anything
      becomes non-finite.
    - `throw`: raise a [`node_flow.FlowError`][] saying at which step it diverged (under
      `jit`: `eqx.error_if` on every output); with `throw=False` see `.result` and
      `.stats["num_steps"]`.
    - `save_models`: keep the models at the save steps.
    - `target_loss`: optional $\ell^\star > 0$: stop at the first iterate $k$ with
      $\ell(z_k) \le \ell^\star$ (a success; `.target_reached` is true,
      `.stats["num_steps"]` is $k$ and the later saves hold iterate $k$).

    **Returns:** a [`node_flow.DescentSolution`][] with `.steps`, `.ts`, `.zs`, `.losses`,
    `.models`, `.stats` and `.result`.
    """
    fname = "gradient_descent"
    if not isinstance(model, eqx.Module) or not callable(getattr(model, "lift", None)):
        raise TypeError(f"{fname}: `model` must be an eqx.Module with a `.lift()` method.")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if not jax.tree.leaves(params):
        raise ValueError(f"{fname}: `model` has no floating-point parameters to train.")
    check_real(f"{fname}: the initial model", params)
    check_finite(f"{fname}: the initial model", params)
    check_lift_output(fname, model)
    for name, value in (("lr", lr), ("time_scale", time_scale), ("blowup", blowup)):
        check_positive(fname, name, value)
    if target_loss is not None:
        check_positive(fname, "target_loss", target_loss)
        target_loss = as_float(target_loss)
    _check_count(fname, "num_steps", num_steps)
    _check_count(fname, "save_every", save_every)
    steps, ts, saved, models, result, done, reached = _descent_core(
        params, static, loss, as_float(lr), as_float(time_scale), as_float(blowup),
        target_loss, int(num_steps), int(save_every), bool(save_models),
    )  # fmt: skip
    where = ""
    if not result.is_traced() and throw:
        k = int(np.asarray(done))
        where = f"It diverged at step {k} (t = k·lr·time_scale = {k * float(lr * time_scale):.6g})."
    outputs = (steps, ts, saved["zs"], saved["losses"], models)
    steps, ts, zs, losses, models = raise_or_guard(fname, outputs, result, where, throw)
    return DescentSolution(
        steps=steps,
        ts=ts,
        zs=zs,
        losses=losses,
        models=models,
        stats={"num_steps": done},
        result=result,
        target_reached=reached,
    )
