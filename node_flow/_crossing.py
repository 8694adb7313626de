r"""Crossing times on the dense solution of a flow: the first $t$ with
$f(z(t)) \ge$ `level`, to a relative accuracy set by the root finder, not by a save grid."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float

from ._solution import FlowSolution


def _first_bracket(sol: FlowSolution, g: Callable) -> tuple[Any, Any, Any]:
    """Walk the accepted steps until g ≥ 0 at a step end: (left, right, found)."""
    interp = sol.interpolation
    ts = interp.ts
    last = interp.ts_size - 1

    def cond(i):
        return (i <= last) & (g(ts[i]) < 0)

    i = jax.lax.while_loop(cond, lambda i: i + 1, jnp.asarray(1))
    found = i <= last
    i = jnp.minimum(i, last)
    return ts[jnp.maximum(i - 1, 0)], ts[i], found


def crossing_time(
    sol: FlowSolution,
    fn: Callable[[Array], Any],
    level: Any,
    *,
    rtol: float = 1e-12,
    full_output: bool = False,
) -> Float[Array, ""] | tuple[Float[Array, ""], Bool[Array, ""]]:
    r"""The first time $t \in [t_0, t_{\rm final}]$ at which $f(z(t)) \ge$ `level`.

    $z(t)$ is the dense output of the flow ([`node_flow.FlowSolution.evaluate`][]); the
    crossing is bracketed between the end points of two consecutive accepted steps (the
    first step end where $f(z) \ge$ `level`), then found by bisection
    (`optimistix.Bisection`) on the step's interpolant to `rtol` relative accuracy in
    time. The answer is as accurate as the solve itself: the interpolant's error (of the
    order of the solver tolerance) moves the crossing by that error divided by the slope
    of $f(z(t))$. A crossing entered and left within a single step is not seen.

    **Arguments:**

    - `sol`: a [`node_flow.FlowSolution`][] of a flow run with `dense=True`.
    - `fn`: $z \mapsto$ a real scalar (e.g. a mode strength `lambda z: u @ z @ v`).
    - `level`: the level to reach.
    - `rtol`: relative accuracy of the time.
    - `full_output`: also return the flag `crossed`.

    **Returns:** the crossing time, NaN when $f(z(t))$ stays below `level` on
    $[t_0, t_{\rm final}]$; with `full_output=True`, `(time, crossed)` where `crossed` is a
    boolean (False exactly when the time is NaN). $t_0$ when $f(z(t_0)) \ge$ `level`.
    """
    if not isinstance(sol, FlowSolution):
        raise TypeError(f"crossing_time: `sol` must be a FlowSolution; got {type(sol).__name__}.")
    if sol.interpolation is None:
        raise ValueError(
            "crossing_time: `sol` has no dense output; run the flow with `dense=True`."
        )
    if not callable(fn):
        raise TypeError("crossing_time: `fn` must be a callable z ↦ real scalar.")
    g = lambda t: jnp.asarray(fn(sol.evaluate(t))) - level
    t0 = sol.interpolation.ts[0]
    at_start = g(t0) >= 0
    left, right, found = _first_bracket(sol, g)
    scale = jnp.maximum(jnp.abs(left), jnp.abs(right))
    solver = optx.Bisection(rtol=0.0, atol=rtol * scale, flip=False, expand_if_necessary=False)
    root = optx.root_find(
        lambda t, _: g(t),
        solver,
        0.5 * (left + right),
        options=dict(lower=left, upper=right),
        max_steps=256,
        throw=False,
    ).value
    crossed = at_start | found
    time = jnp.where(at_start, t0, jnp.where(found, root, jnp.nan))
    return (time, crossed) if full_output else time
