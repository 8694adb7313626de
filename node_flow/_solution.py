"""What a flow returns: the `FlowSolution` and the `RESULTS` enumeration."""

from typing import Any

import diffrax
import equinox as eqx
from jaxtyping import Array, Float, PyTree, Real


class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """diffrax's results, plus the ways a training flow can fail on its own."""

    blew_up = (
        "The flow blew up: the state left the ball of radius `blowup` (relative to the "
        "initial state) or became non-finite. Lower the learning rate (`time_scale`), "
        "shorten `t1` or check the loss."
    )
    nonfinite_gradient = (
        "The vector field is not finite (NaN or inf) at the initial point: the loss or "
        "its gradient is not finite there."
    )


class FlowSolution(eqx.Module):
    r"""The solution of a training flow, saved at the times `ts`.

    **Fields:**

    - `ts`: the save times; entries after a terminating event are `inf` (as in diffrax).
    - `zs`: the lifted variable $z(t)$ at `ts` (leading time axis).
    - `losses`: $\ell(z(t))$ at `ts`.
    - `models`: for [`node_flow.gradient_flow`][], the model with a leading time axis on
      every array (index it with `jax.tree.map(lambda x: x[i], sol.models)`); `None` for
      [`node_flow.intrinsic_flow`][].
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps` and `num_vf_evals`
      (vector-field evaluations: `num_steps × (stages − fsal) + fsal` for Runge–Kutta
      solvers, `-1` when unknown).
    - `result`: a [`node_flow.RESULTS`][]; `RESULTS.successful` unless the solve failed
      (only seen with `throw=False`) or an `event` stopped it.
    - `t_final`: the time at which the solve stopped (`t1`, or the event time).
    """

    ts: Real[Array, " times"]
    zs: Float[Array, "times ..."]
    losses: Float[Array, " times"]
    models: PyTree[Any] | None
    stats: dict[str, Any]
    result: RESULTS
    t_final: Real[Array, ""]
