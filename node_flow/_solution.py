"""What a flow returns: the `FlowSolution` and the `RESULTS` enumeration."""

from typing import Any

import diffrax
import equinox as eqx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Real


class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """diffrax's results, plus the ways a training flow can fail on its own."""

    blew_up = (
        "The flow blew up: the state left the ball of radius `blowup` (relative to the "
        "initial state) or became non-finite. Lower the learning rate (`time_scale`), "
        "shorten `t1` or check the loss."
    )
    nonfinite_gradient = (
        "The vector field is not finite (NaN or inf) at the initial point: the loss, "
        "its gradient or the kernel is not finite there (or a kernel's check failed, "
        "e.g. a NaN parameter: call the kernel at z0 outside `jit` for its message)."
    )
    nonfinite_loss = (
        "The loss became non-finite (NaN or inf) along the flow while the state stayed "
        "finite: the loss is not defined on part of the trajectory."
    )
    loss_increased = (
        "The loss increased along the flow by more than the solver tolerance: the "
        "vector field is not a descent direction (a kernel that is not positive "
        "semi-definite, a negative `time_scale`, or a wrong sign in a custom kernel or "
        "`precondition`)."
    )
    invalid_input = (
        "The times or save times are invalid (non-finite, t1 <= t0, or `ts` unsorted or "
        "outside [t0, t1]); they were traced, so they could only be checked inside the "
        "computation."
    )
    diverged = (
        "Gradient descent diverged: the parameters or the loss became non-finite, or the "
        "loss grew beyond `blowup` times its initial value. Lower the learning rate `lr` "
        "(stable steps need lr·time_scale below 2 / (largest Hessian eigenvalue))."
    )


class FlowSolution(eqx.Module):
    r"""The solution of a training flow, saved at the times `ts`.

    **Fields:**

    - `ts`: the save times; entries after a terminating event are `inf` (as in diffrax).
      Without `ts` given to the flow they are $[t_0, t_{\mathrm{final}}]$: the last save is
      where the solve ended (`t1`, an event or `target_loss`).
    - `zs`: the lifted variable $z(t)$ at `ts` (leading time axis).
    - `losses`: $\ell(z(t))$ at `ts`.
    - `models`: for [`node_flow.gradient_flow`][], the model with a leading time axis on
      every array (index it with `jax.tree.map(lambda x: x[i], sol.models)`); `None` for
      [`node_flow.intrinsic_flow`][] and with `save_models=False`.
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps` and `num_vf_evals`
      (vector-field evaluations, counting the core's own one at $y_0$:
      `num_steps × (stages − fsal) + fsal + 1` (plus an FSAL re-evaluation per step
      rejected before the first accepted one) for Runge–Kutta solvers, `-1` when
      unknown).
    - `result`: a [`node_flow.RESULTS`][]; `RESULTS.successful` unless the solve failed
      (only seen with `throw=False`) or an `event` stopped it.
    - `t_final`: the time at which the solve stopped (`t1`, or the event time).
    - `interpolation`: the solver's dense output (`dense=True`), else `None`; use
      [`node_flow.FlowSolution.evaluate`][].
    - `lift`: maps the solver state (a flat vector) to $z$ for `evaluate`.
    - `target_reached`: with `target_loss`, whether the solve stopped because the loss
      reached it (then `result` is `RESULTS.event_occurred` and `t_final` the first time
      $\ell \le$ `target_loss`); `None` without `target_loss`.
    """

    ts: Real[Array, " times"]
    zs: Float[Array, "times ..."]
    losses: Float[Array, " times"]
    models: PyTree[Any] | None
    stats: dict[str, Any]
    result: RESULTS
    t_final: Real[Array, ""]
    interpolation: diffrax.DenseInterpolation | None = None
    lift: Any = None
    target_reached: Bool[Array, ""] | None = None

    def evaluate(self, t: Real[ArrayLike, ""]) -> Float[Array, "..."]:
        r"""$z(t)$ for any $t \in [t_0, t_{\rm final}]$, from the solver's dense output
        (the interpolant of each accepted step, of the solver's order; e.g. 4th order for
        `diffrax.Tsit5`). Needs the flow to have been run with `dense=True`.

        **Arguments:** `t`, a scalar time (use `jax.vmap` for many).

        **Returns:** $z(t)$, shaped like one entry of `zs`.
        """
        if self.interpolation is None:
            raise ValueError(
                "FlowSolution.evaluate: this solution has no dense output. Run the flow "
                "with `dense=True` (e.g. `gradient_flow(..., dense=True)`) to evaluate "
                "z(t) between save times."
            )
        state = self.interpolation.evaluate(t)
        return state if self.lift is None else self.lift(state)


class DescentSolution(eqx.Module):
    r"""The iterates of [`node_flow.gradient_descent`][], saved every `save_every` steps.

    **Fields:**

    - `steps`: the step numbers $k$ saved ($0$, `save_every`, …, `num_steps`).
    - `ts`: the gradient-flow times they approximate, $t_k = k \cdot$ `lr` $\cdot$ `time_scale`.
    - `zs`, `losses`, `models`: $z$, the loss and the model (leading axis over saves;
      `models` is `None` with `save_models=False`). After a divergence the entries hold
      the last finite iterate.
    - `stats`: `num_steps`, the steps completed (the step at which it diverged, if it did).
    - `result`: `RESULTS.successful` or `RESULTS.diverged`.
    - `target_reached`: with `target_loss`, whether an iterate reached it (the descent
      stopped there); `None` without `target_loss`.
    """

    steps: Int[Array, " saves"]
    ts: Real[Array, " saves"]
    zs: Float[Array, "saves ..."]
    losses: Float[Array, " saves"]
    models: PyTree[Any] | None
    stats: dict[str, Any]
    result: RESULTS
    target_reached: Bool[Array, ""] | None = None
