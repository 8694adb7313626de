r"""The one flow core: every training flow is a vector field, what to save, and options.

[`node_flow.gradient_flow`][] and [`node_flow.intrinsic_flow`][] only build a
`field` (an `eqx.Module` $y \mapsto (\dot y, \dot\ell, \ell)$: the velocity, the rate of
change of the loss along it, and the loss) and a `save` module ($y \mapsto$ what is kept
at the save times), then call [`integrate`][], a single jit-compiled function that

- appends to the state the *ascent* $a(t) = \int_{t_0}^t \max(0, \dot\ell)\,ds$, the
  total increase of the loss (zero for a descent flow, up to rounding): the solver state
  is one flat vector $(y, a)$ (one leaf: every solver operation is one array operation,
  which keeps the compiled program small);
- picks the first step from $f(y_0)$ (Hairer, Nørsett & Wanner's first estimate), stops
  on a non-finite or exploding state or on an ascent beyond the solver tolerance (one
  boolean event), and guards the step-size controller so that a non-finite trial step
  shrinks the step instead of poisoning it with NaN;
- stops, if asked, when the loss reaches `target_loss` or on a user `event`, the time
  located by bisection on the step's interpolant (`_EventBisection`);
- solves with `diffrax.diffeqsolve` and classifies the outcome as a
  [`node_flow.RESULTS`][] member.

[`finish`][] turns the raw output into a [`node_flow.FlowSolution`][], raising
[`node_flow.FlowError`][] (eagerly) or guarding every output with `eqx.error_if` (under
`jit`) with the same message.
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, ArrayLike, PyTree, Real

from ._checks import tracing_a_flow
from ._solution import FlowSolution, RESULTS


class FlowError(RuntimeError):
    """A training flow failed: the solver hit `max_steps`, the step size collapsed, the
    flow blew up, the loss increased or was not finite. The message says which and where."""


# The step-size floor in units in the last place of max(|t0|, |t1|): a smaller step is
# below the resolution of time itself, so a collapse to it means a finite-time
# singularity or extreme stiffness (reported as `dt_min_reached`, never forced through).
_DTMIN_ULPS = 8
# The ascent tolerated before `loss_increased`: this many times atol + rtol·|ℓ(z0)|.
# A descent flow has zero ascent up to rounding (orders of magnitude below).
_ASCENT_FACTOR = 10.0
# The relative accuracy to which an event time (a user `event`, `target_loss`) is located
# on the step's interpolant; float32 stops earlier, at the resolution of t.
_EVENT_RTOL = 1e-12


class Options(eqx.Module):
    """Everything a flow solve needs besides its vector field: one object, not a run of
    positional arguments. `controller=None` means a PID controller from `rtol`/`atol`."""

    solver: diffrax.AbstractSolver
    controller: diffrax.AbstractStepSizeController | None
    adjoint: diffrax.AbstractAdjoint
    rtol: Real[ArrayLike, ""]
    atol: Real[ArrayLike, ""]
    blowup: Real[ArrayLike, ""]
    dt0: Real[ArrayLike, ""] | None
    event: Callable | None
    target_loss: Real[ArrayLike, ""] | None
    progress_meter: diffrax.AbstractProgressMeter
    max_steps: int = eqx.field(static=True)
    dense: bool = eqx.field(static=True)
    # No `ts` given: the last save is where the solve ends (t1, or the stop time of an
    # event or `target_loss`), not an `inf` placeholder.
    save_end: bool = eqx.field(static=True, default=False)


class StateToY(eqx.Module):
    """The flat solver state $(y, a)$ ↦ $y$ in its shape, then ↦ $z$ by `lift` if given."""

    shape: tuple[int, ...] = eqx.field(static=True)
    lift: Callable | None = None

    def __call__(self, state):
        y = jnp.reshape(state[:-1], self.shape)
        return y if self.lift is None else self.lift(y)


class _FiniteGuard(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive controller: a trial step whose candidate or error estimate is
    not finite is rejected with an infinite error (the step shrinks by `factormin`).
    diffrax divides a NaN error into a NaN step size and then rejects every later step."""

    controller: diffrax.AbstractAdaptiveStepSizeController
    # The first step, given here rather than as diffrax's `dt0`: diffrax checks a traced
    # `dt0` with an `eqx.error_if` host callback (see `_SaveAtTimes`).
    first_step: Array | None = None

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return _FiniteGuard(self.controller.wrap(direction), self.first_step)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None and self.first_step is not None:
            dt0 = self.first_step
        t, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        # (inner state, a step was accepted, steps rejected before the first acceptance):
        # an FSAL solver re-evaluates its first stage on each of those.
        return t, (state, jnp.asarray(False), jnp.asarray(0))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        finite = lambda tree: jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])
        )
        bad = ~(finite(y1_candidate) & finite(y_error))
        y_error = jax.tree.map(lambda e: jnp.where(bad, jnp.inf, e), y_error)
        y1_candidate = jax.tree.map(lambda a, b: jnp.where(bad, a, b), y0, y1_candidate)
        inner, accepted, first_rejections = state
        keep, next_t0, next_t1, jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        first_rejections = first_rejections + (~accepted & ~keep).astype(int)
        state = (inner, accepted | keep, first_rejections)
        return keep, next_t0, next_t1, jump, state, result


class _EventBisection(optx.AbstractRootFinder):
    """Bisection for diffrax's event time: diffrax hands the root finder one value per
    event condition, all zero but the triggered one, so their sum is that condition's.
    Derivative-free (Newton would need forward-mode autodiff through the model, which a
    `LinearNeuralODE`'s reverse-mode forward solve does not support) and cheap to compile.
    Stops when the bracket is below `atol + rtol·|t|` or can no longer shrink."""

    rtol: float
    atol: float
    norm: Callable = eqx.field(static=True, default=jnp.abs)

    def _value(self, fn, t, args):
        out, aux = fn(t, args)
        return sum(jnp.asarray(v, t.dtype) for v in jax.tree.leaves(out)), aux

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        lower = jnp.asarray(options["lower"], jnp.result_type(y))
        upper = jnp.asarray(options["upper"], jnp.result_type(y))
        flip = self._value(fn, lower, args)[0] > self._value(fn, upper, args)[0]
        return lower, upper, flip

    def step(self, fn, y, args, options, state, tags):
        lower, upper, flip = state
        value, aux = self._value(fn, y, args)
        below = flip ^ (value < 0)
        lower, upper = jnp.where(below, y, lower), jnp.where(below, upper, y)
        return lower + 0.5 * (upper - lower), (lower, upper, flip), aux

    def terminate(self, fn, y, args, options, state, tags):
        lower, upper, _ = state
        width = upper - lower
        small = width <= self.atol + self.rtol * jnp.maximum(jnp.abs(lower), jnp.abs(upper))
        middle = lower + 0.5 * width
        stuck = (middle <= lower) | (middle >= upper)
        return small | stuck, optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


class _SaveAtTimes(diffrax.AbstractWrappedSolver):
    """`solver`, saving `save(y)` at the times `ts` from each step's interpolant as it
    steps: what `diffrax.SaveAt(ts=…)` does, the same interpolant and the same
    evaluations. diffrax checks traced save times with `eqx.error_if`, a host callback,
    and JAX's persistent compilation cache stores no program that holds one; the core
    checked its times already (`_valid_times`). The saves live in the solver state,
    which diffrax restores when it rejects a step; after the solve, saves beyond the stop
    time (an event inside the last step) are dropped as diffrax does (`_saved`)."""

    solver: diffrax.AbstractSolver
    ts: Array
    save: Callable

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return self.solver.interpolation_cls

    @property
    def root_finder(self):  # implicit solvers: diffrax sets its tolerances through this
        return self.solver.root_finder

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        blank = lambda s: jnp.zeros((len(self.ts), *s.shape), s.dtype)
        saved = jax.tree.map(blank, jax.eval_shape(self.save, y0))
        return self.solver.init(terms, t0, t1, y0, args), jnp.asarray(0), saved

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, index, saved = solver_state
        y1, y_error, dense_info, inner, result = self.solver.step(
            terms, t0, t1, y0, args, inner, made_jump
        )
        interpolant = self.solver.interpolation_cls(t0=t0, t1=t1, **dense_info)
        num = len(self.ts)

        def due(carry):
            i, _ = carry
            return (i < num) & (self.ts[jnp.minimum(i, num - 1)] <= t1)

        def save_one(carry):
            i, saved = carry
            value = self.save(interpolant.evaluate(self.ts[i]))
            return i + 1, jax.tree.map(lambda a, v: a.at[i].set(v), saved, value)

        # As diffrax saves: a loop that reverse-mode autodiff can differentiate.
        index, saved = eqxi.while_loop(
            due, save_one, (index, saved), max_steps=num, kind="checkpointed", checkpoints=num
        )
        return y1, y_error, dense_info, (inner, index, saved), result


def _saved(solver_state, ts, t_final):
    """The save times and saves of `_SaveAtTimes` after the solve: `inf` where the solve
    stopped before reaching a save time (diffrax's convention)."""
    _, index, saved = solver_state
    reached = (jnp.arange(len(ts)) < index) & (ts <= t_final)
    mask = lambda a: jnp.where(jnp.reshape(reached, (-1,) + (1,) * (a.ndim - 1)), a, jnp.inf)
    return jnp.where(reached, ts, jnp.inf), jax.tree.map(mask, saved)


def _first_step(state0, f0, t0, t1, rtol, atol):
    r"""The first step: Hairer–Nørsett–Wanner's first estimate $h_0 = 0.01\,d_0/d_1$
    (*Solving ODEs I*, §II.4), $d_0$, $d_1$ the scaled RMS norms of $y_0$ and $f(y_0)$
    ($10^{-6}$ when either is below $10^{-5}$), clipped to $t_1 - t_0$. It needs only
    $f(y_0)$, which the core evaluates anyway: their refinement by a second evaluation
    would compile the vector field once more, and the controller corrects the step within
    a few steps. Finite and positive whenever $f(y_0)$ is finite."""
    scale = atol + rtol * jnp.abs(state0)
    d0 = jnp.sqrt(jnp.mean((state0 / scale) ** 2))
    d1 = jnp.sqrt(jnp.mean((f0 / scale) ** 2))
    small = (d0 < 1e-5) | (d1 < 1e-5) | ~jnp.isfinite(d1)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
    return jax.lax.stop_gradient(jnp.minimum(h0, t1 - t0))


def _controller(options, t0, t1, first_step):
    """The step-size controller: the user's, or PID from rtol/atol with a floor at
    `_DTMIN_ULPS`; an adaptive one wrapped by `_FiniteGuard`, which starts it with the
    user's `dt0` or else `first_step`."""
    if options.controller is not None:
        c = options.controller
    else:
        eps = jnp.finfo(jnp.result_type(t1)).eps
        dtmin = _DTMIN_ULPS * eps * jnp.maximum(jnp.abs(t0), jnp.abs(t1))
        c = diffrax.PIDController(
            rtol=options.rtol, atol=options.atol, dtmin=dtmin, force_dtmin=False
        )
    if isinstance(c, diffrax.AbstractAdaptiveStepSizeController):
        return _FiniteGuard(c, first_step if options.dt0 is None else options.dt0), True
    return c, False


def _valid_times(t0, t1, ts):
    """Traced times are checked here (concrete ones were refused before the solve)."""
    eps = jnp.finfo(jnp.result_type(t1)).eps
    slack = 64 * eps * jnp.maximum(jnp.abs(t0), jnp.abs(t1))
    ok = jnp.isfinite(t0) & jnp.isfinite(t1) & (t1 > t0) & jnp.all(jnp.isfinite(ts))
    ok = ok & jnp.all(ts[1:] >= ts[:-1]) & (ts[0] >= t0 - slack) & (ts[-1] <= t1 + slack)
    t0s, t1s = jnp.where(ok, t0, 0.0), jnp.where(ok, t1, 1.0)
    return ok, t0s, t1s, jnp.where(ok, jnp.clip(ts, t0s, t1s), t1s)


def _num_vf_evals(solver, num_steps, first_rejections):
    """Runge–Kutta: every stage of every step, less the first stage of FSAL steps after
    the first accepted one, plus the core's own evaluation at y0."""
    if isinstance(solver, diffrax.AbstractRungeKutta) and isinstance(
        solver.tableau, diffrax.ButcherTableau
    ):
        fsal = int(solver.tableau.fsal)
        stages = solver.tableau.num_stages
        return num_steps * (stages - fsal) + fsal * (1 + first_rejections) + 1
    return -1 + 0 * num_steps


def _stop_event(blowup, scale0, ascent_tol):
    def stop(t, y, args, **kwargs):  # diffrax passes `y` by keyword
        y, ascent = y[:-1], y[-1]
        blown = jnp.any(~jnp.isfinite(y)) | (jnp.max(jnp.abs(y)) > blowup * scale0)
        return blown | ~(ascent <= ascent_tol)

    return stop


def _conditions(options, save, unflat, loss0, ascent_tol, scale0):
    """The event conditions: the boolean stop, then `target_loss` (reached at the start;
    crossed during a step), then the user's event. Returns (conditions, root finder)."""
    conds = (_stop_event(options.blowup, scale0, ascent_tol),)
    if options.target_loss is not None:
        target = jnp.asarray(options.target_loss, loss0.dtype)
        at_start = loss0 <= target
        conds = conds + (
            lambda t, y, args, **kw: at_start,
            lambda t, y, args, **kw: save(unflat(y))["losses"] - target,
        )
    if options.event is not None:
        conds = conds + (lambda t, y, args, **kw: options.event(t, unflat(y)),)
    real = options.event is not None or options.target_loss is not None
    return conds, _EventBisection(rtol=_EVENT_RTOL, atol=0.0) if real else None


def _saves_at_start(sol_ts, saved, ts, t0, num_steps, save, y0):
    """A solve an event stops before its first step (e.g. `target_loss` already met)
    saves nothing: its save times at t0 get the initial point (`save` is only called
    then: it may have side effects)."""
    missing = (num_steps == 0) & (ts <= t0) & jnp.isinf(sol_ts)

    def fill():
        where = lambda a, b: jnp.where(jnp.reshape(missing, (-1,) + (1,) * (a.ndim - 1)), b, a)
        return jax.tree.map(where, saved, save(y0))

    saved = jax.lax.cond(jnp.any(missing), fill, lambda: saved)
    return jnp.where(missing, ts, sol_ts), saved


def _classify(sol, raw_result, ok_times, bad_start, ascent_tol, final_ascent, losses, ts_reached):
    result = RESULTS.promote(raw_result)
    stopped = sol.event_mask[0]
    ascended = ~(final_ascent <= ascent_tol)
    result = RESULTS.where(stopped & ascended, RESULTS.loss_increased, result)
    result = RESULTS.where(stopped & ~ascended, RESULTS.blew_up, result)
    done = (result == RESULTS.successful) | (result == RESULTS.event_occurred)
    finite_losses = jnp.all(jnp.isfinite(losses) | jnp.isinf(ts_reached))
    result = RESULTS.where(done & ~finite_losses, RESULTS.nonfinite_loss, result)
    result = RESULTS.where(bad_start, RESULTS.nonfinite_gradient, result)
    return RESULTS.where(ok_times, result, RESULTS.invalid_input)


@eqx.filter_jit
def integrate(field, save, y0: Array, t0, t1, ts, options: Options):
    """Solve $\\dot y = $ `field(y)[0]` on [t0, t1] with the ascent monitor; returns
    (ts, saved pytree at ts, t_final, stats, result, interpolation or None). Traced with
    `tracing_a_flow`: a failed check inside the field is a NaN the result reports."""
    with tracing_a_flow():
        return _integrate(field, save, y0, t0, t1, ts, options)


def _traced_once(fn):
    """`fn` under `jit`, traced once per flow. The solver calls the vector field several
    times in one flow's trace (at $y_0$, in the step, after rejections) and the save
    function at every save point; each call after the first reuses the first one's trace,
    which JAX caches by `fn`'s static parts, the shapes and the configuration in force.
    diffrax evaluates some stages under `jax.numpy_dtype_promotion("standard")`, so every
    call runs under the promotion rule of the flow's caller (one cache key, and the user's
    own rule for the user's loss). For a vector field that is itself a solve (a
    `LinearNeuralODE`) tracing is most of a warm start. Only `_integrate` calls it, always
    under `tracing_a_flow`, so a cached trace never mixes the two behaviours of `guard`."""
    promotion = jax.config.jax_numpy_dtype_promotion  # pyright: ignore[reportAttributeAccessIssue]

    def call(y):
        with jax.numpy_dtype_promotion(promotion):
            return _jit_call(fn, y)

    return call


@eqx.filter_jit
def _jit_call(fn, y):
    return fn(y)


def _integrate(field, save, y0, t0, t1, ts, options):
    field, save = _traced_once(field), _traced_once(save)
    ok_times, t0, t1, ts = _valid_times(t0, t1, ts)
    unflat = StateToY(y0.shape)
    augment = lambda dy, rate: jnp.concatenate([jnp.ravel(dy), jnp.maximum(rate, 0.0)[None]])
    f = lambda state: (lambda dy, rate, _: augment(dy, rate))(*field(unflat(state)))
    dy0, rate0, loss0 = field(y0)
    state0 = jnp.concatenate([jnp.ravel(y0), jnp.zeros((1,), y0.dtype)])
    f0 = augment(dy0, rate0)
    bad_start = ~(jnp.all(jnp.isfinite(f0)) & jnp.isfinite(loss0))
    first_step = _first_step(state0, f0, t0, t1, options.rtol, options.atol)
    controller, adaptive = _controller(options, t0, t1, first_step)
    ascent_tol = _ASCENT_FACTOR * (options.atol + options.rtol * jnp.abs(loss0))
    scale0 = jnp.maximum(1.0, jnp.max(jnp.abs(y0)))
    conds, root = _conditions(options, save, unflat, loss0, ascent_tol, scale0)
    _end = lambda t, state: (t, state[-1], save(unflat(state)) if options.save_end else None)
    saveat = diffrax.SaveAt(
        t1=True,
        fn=lambda t, state, args: _end(t, state),
        dense=options.dense,
        solver_state=True,
        controller_state=adaptive,
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, state, args: f(state)),
        _SaveAtTimes(options.solver, ts, lambda state: save(unflat(state))),
        t0,
        t1,
        None if adaptive else options.dt0,
        state0,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=options.adjoint,
        event=diffrax.Event(conds, root_finder=root),
        max_steps=options.max_steps,
        throw=False,
        progress_meter=options.progress_meter,
    )
    t_final, ascent, end = sol.ys
    ts_reached, saved = _saved(sol.solver_state, ts, t_final[0])
    num_steps = sol.stats["num_steps"]
    sol_ts = ts_reached
    if options.target_loss is not None:  # the only event that can stop at t0 with success
        sol_ts, saved = _saves_at_start(sol_ts, saved, ts, t0, num_steps, save, y0)
    losses = saved["losses"]
    result = _classify(
        sol, sol.result, ok_times, bad_start, ascent_tol, ascent[0], losses, ts_reached
    )
    first_rejections = sol.controller_state[2] if adaptive else 0
    stats = {
        "num_steps": num_steps,
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        "num_vf_evals": _num_vf_evals(options.solver, num_steps, first_rejections),
    }
    if options.save_end:  # after _classify: it reads the save grid as the solve left it
        sol_ts = sol_ts.at[-1].set(t_final[0])
        saved = jax.tree.map(lambda a, b: a.at[-1].set(b[0]), saved, end)
    interpolation = (sol.interpolation, unflat) if options.dense else None
    target_reached = None
    if options.target_loss is not None:
        target_reached = (sol.event_mask[1] | sol.event_mask[2]) & is_ok(result)
    return sol_ts, saved, t_final[0], stats, result, interpolation, target_reached


_HINTS = {
    "dt_min_reached": (
        " The step size collapsed to the resolution of time: the flow has a finite-time "
        "singularity (a blow-up of the loss or of the weights) or is extremely stiff "
        "there. Check the loss near the stopping time, stop before it (smaller `t1`, or "
        "an `event`), or try a stiff solver (e.g. `solver=diffrax.Kvaerno5()`)."
    ),
    "max_steps_reached": (
        " Long plateaus (small initializations) need many steps: raise `max_steps`, "
        "or loosen rtol/atol."
    ),
}


_FAILURES = (
    "max_steps_reached",
    "dt_min_reached",
    "max_steps_rejected",
    "internal_error",
    "blew_up",
    "nonfinite_gradient",
    "nonfinite_loss",
    "loss_increased",
    "invalid_input",
    "diverged",
    "nonlinear_max_steps_reached",
    "nonlinear_divergence",
    "nonfinite",
)


def failure_message(fname: str, name: str) -> str:
    """The message of a failed flow, the same for the eager and the traced path."""
    return f"{fname}: {RESULTS[getattr(RESULTS, name)]}{_HINTS.get(name, '')}"


def is_ok(result) -> Any:
    """Whether a result is a success (an `event` stopping the solve is one)."""
    return (result == RESULTS.successful) | (result == RESULTS.event_occurred)


def raise_or_guard(fname: str, outputs: PyTree, result, where: str, throw: bool) -> PyTree:
    """With `throw`: eagerly, a [`node_flow.FlowError`][] for a failed `result` (its
    message, a hint, and `where` it stopped); under `jit`, every output guarded by
    `eqx.error_if` with the same message. Returns `outputs`."""
    if not throw:
        return outputs
    if not result.is_traced():
        message = RESULTS[result]
        if message in (RESULTS[RESULTS.successful], RESULTS[RESULTS.event_occurred]):
            return outputs
        names = [k for k in _FAILURES if RESULTS[getattr(RESULTS, k)] == message]
        text = failure_message(fname, names[0]) if names else f"{fname}: {message}"
        raise FlowError(f"{text} {where}".rstrip())
    known = jnp.zeros((), bool)
    for name in _FAILURES:
        member = getattr(RESULTS, name)
        known = known | (result == member)
        outputs = eqx.error_if(outputs, result == member, failure_message(fname, name))
    failed = ~is_ok(result) & ~known
    return eqx.error_if(outputs, failed, f"{fname}: the flow failed (see `.result`).")


def finish(fname, raw, models, lift, t0, t1, throw) -> FlowSolution:
    """A [`node_flow.FlowSolution`][] from `integrate`'s output, checked (see
    `raise_or_guard`)."""
    ts, saved, t_final, stats, result, dense, target_reached = raw
    interpolation, to_y = (None, None) if dense is None else dense
    outputs = (ts, saved["zs"], saved["losses"], models, t_final)
    if not result.is_traced() and throw:
        where = (
            f"Stopped at t = {float(t_final):.6g} of [{float(t0):.6g}, {float(t1):.6g}] "
            f"after {int(stats['num_steps'])} steps."
        )
    else:
        where = ""
    ts, zs, losses, models, t_final = raise_or_guard(fname, outputs, result, where, throw)
    return FlowSolution(
        ts=ts,
        zs=zs,
        losses=losses,
        models=models,
        stats=stats,
        result=result,
        t_final=t_final,
        interpolation=interpolation,
        lift=None if to_y is None else StateToY(to_y.shape, lift),
        target_reached=target_reached,
    )
