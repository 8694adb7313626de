"""Training a ReLU network: the square loss on a fixed activation pattern, the
pattern-change event, and the piecewise parameter and intrinsic flows."""

import dataclasses
import logging

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._checks import check_finite
from .._flow import FlowError
from ._architecture import Architecture
from ._compare import compare_intervals
from ._kinks import kink_transition, KinkState, settle_gates
from ._lifting import path_features, path_products
from ._network import AbstractReLUNetwork, conservation_laws
from ._sliding import gates_of, Problem, rates, sliding_gates, solve_interval


logger = logging.getLogger(__name__)


class PatternLoss(eqx.Module):
    r"""The square loss as a function of the path-lifting on one activation region:

    $$\ell(z) = \frac{1}{2N} \sum_{i=1}^N \sum_o \Big(\sum_{p \to o} \Phi_{ip} z_p - y_{io}\Big)^2,
    \qquad \Phi_{ip} = [p \text{ active on } x_i]\, x_{i,\mathrm{in}(p)}.$$

    Where the activation pattern of the network equals the one it was built from,
    $\ell(\varphi(\theta))$ is the network's square loss
    $\frac{1}{2N}\sum_i \|f_\theta(x_i) - y_i\|^2$.
    Build it with [`node_flow.relu.pattern_loss`][].
    """

    features: Float[Array, "samples paths"]
    targets: Float[Array, "samples outputs"]
    arch: Architecture = eqx.field(static=True)

    def predict(self, z: Float[Array, " paths"]) -> Float[Array, "samples outputs"]:
        r"""The network outputs on the dataset, $\hat y_{io} = \sum_{p \to o} \Phi_{ip} z_p$."""
        E = jnp.asarray(np.eye(len(self.arch.outputs))[self.arch.path_output], dtype=z.dtype)
        return (self.features * z) @ E

    def __call__(self, z: Float[Array, " paths"]) -> Float[Array, ""]:
        residual = self.predict(z) - self.targets
        return jnp.sum(residual**2) / (2 * self.targets.shape[0])


def _dataset(fname, net, X, Y):
    X, Y = jnp.asarray(X), jnp.asarray(Y)
    arch = net.arch
    if X.ndim != 2 or X.shape[1] != len(arch.inputs):
        raise ValueError(
            f"{fname}: X must have shape (samples, {len(arch.inputs)}); got {X.shape}."
        )
    if Y.shape != (X.shape[0], len(arch.outputs)):
        raise ValueError(
            f"{fname}: Y must have shape ({X.shape[0]}, {len(arch.outputs)}) (one row per sample "
            f"of X, one column per output); got {Y.shape}."
        )
    return X, Y


def pattern_loss(
    net: AbstractReLUNetwork,
    X: Float[ArrayLike, "samples inputs"],
    Y: Float[ArrayLike, "samples outputs"],
    pattern: Bool[ArrayLike, "samples hidden"] | None = None,
) -> PatternLoss:
    """The square loss of `net` on `(X, Y)` as a function of $z$ on the activation region of
    `pattern` (default: the pattern of `net` on `X`). Rows of `X` and `Y` are samples."""
    X, Y = _dataset("pattern_loss", net, X, Y)
    pattern = net.activation_pattern(X) if pattern is None else jnp.asarray(pattern, dtype=bool)
    if pattern.shape != (X.shape[0], len(net.arch.hidden)):
        raise ValueError(
            f"pattern_loss: pattern must have shape ({X.shape[0]}, {len(net.arch.hidden)}); "
            f"got {pattern.shape}."
        )
    return PatternLoss(path_features(X, pattern, net.arch), Y, net.arch)


def network_loss(
    net: AbstractReLUNetwork,
    X: Float[ArrayLike, "samples inputs"],
    Y: Float[ArrayLike, "samples outputs"],
) -> Float[Array, ""]:
    r"""The square loss $\frac{1}{2N}\sum_i \|f_\theta(x_i) - y_i\|^2$ by the network's own
    forward pass."""
    X, Y = _dataset("network_loss", net, X, Y)
    return jnp.sum((jax.vmap(net)(X) - Y) ** 2) / (2 * X.shape[0])


class PatternChange(eqx.Module):
    r"""A real-valued event for [`node_flow.gradient_flow`][]: positive while the activation
    pattern of the network on `X` equals the reference one, crossing zero when a
    pre-activation changes sign:

    $$c(\theta) = \min_{i, v}\; \big(s_{iv}\, a_{iv}(\theta) + o_{iv}\big),$$

    with $a_{iv}$ the pre-activation of hidden neuron $v$ on $x_i$, $s_{iv} = \pm 1$ the
    reference signs and $o_{iv}$ offsets, zero except for the entries that sit on zero at
    the start of the interval (a crossing just handled), where they make the start value
    a small positive margin.
    """

    X: Float[Array, "samples inputs"]
    signs: Float[Array, "samples hidden"]
    offsets: Float[Array, "samples hidden"]

    def __call__(self, t, net: AbstractReLUNetwork) -> Float[Array, ""]:
        pre = jax.vmap(net.pre_activations)(self.X)
        return jnp.min(self.signs * pre + self.offsets)


@dataclasses.dataclass(frozen=True)
class Interval:
    r"""One interval of [`node_flow.relu.train`][], between two kink events.

    - `start`, `end`: its times.
    - `changed`: the `(sample, neuron)` entries whose status changed at `start` (crossed
      their kink, started or stopped sliding); `neuron` is the id in `arch.hidden`.
    - `sliding`: the entries held on their kink $a_{iv} = 0$ throughout (Filippov).
    - `gate_range`: the smallest and largest sliding gate $\lambda$ met (`None` if none).
    - `intrinsic_error`: the comparison with the intrinsic dynamic (see `intrinsic_kind`),
      `None` when not computed (`intrinsic_note` says why).
    - `intrinsic_kind`: `"flow"` on a fixed-pattern interval: $\max_t |z(t) - z_K(t)| /
      \max_t |z(t)|$ with $z_K$ the intrinsic flow $\dot z = -K(z, h_0)\nabla\ell_k(z)$ from
      $z(t_k)$; `"velocity"` on a sliding interval: $\max_t |\dot z(t) + K(z, h_0)
      \nabla\ell_{G(t)}(z)| / |\dot z|$ at the saves, $\dot z = \partial\varphi\,\dot\theta$
      and $\ell_{G(t)}$ the loss with the sliding gates of the parameter flow.
    - `num_steps`: the solver steps of its parameter flow.
    """

    start: float
    end: float
    changed: tuple[tuple[int, int], ...]
    sliding: tuple[tuple[int, int], ...]
    gate_range: tuple[float, float] | None
    intrinsic_error: float | None
    intrinsic_kind: str | None
    intrinsic_note: str
    num_steps: int


@dataclasses.dataclass(frozen=True)
class Chattering:
    """Why a run stopped with `stop_reason = "chattering"`: the time, the `(sample, neuron)`
    entries involved (`neuron` an id of `arch.hidden`) and an explanation."""

    time: float
    entries: tuple[tuple[int, int], ...]
    message: str


class TrainingSolution(eqx.Module):
    r"""Piecewise training of a ReLU network, one row per interval between kink events.

    **Fields:**

    - `boundaries`: the interval ends $t_0 < t_1 < \dots < t_K$; the inner ones are the
      kink-event times (a pre-activation reaches zero, or a sliding one leaves it).
    - `ts`: `(K, saves)` save times, evenly spaced on each interval.
    - `models`: the network with leading `(K, saves)` axes (parameter flow).
    - `zs`: `(K, saves, d)`, $z(t) = \varphi(\theta(t))$ along the parameter flow.
    - `zs_intrinsic`: `(K, saves, d)`, the intrinsic flow on the fixed-pattern intervals
      (restarted from $z(t_k)$ on each), the parameter $z$ on sliding intervals; `None`
      when not computed.
    - `losses`: `(K, saves)` the loss along the parameter flow.
    - `patterns`: `(K, samples, hidden)` the activation pattern on each interval (the
      sliding entries, held at $a = 0$, are `False`; see `intervals`).
    - `h0`: the conservation laws at the start.
    - `stop_reason`: `"t1"`, `"max_intervals"` or `"chattering"` (see `chattering`).
    - `intervals`: one [`node_flow.relu.Interval`][] per interval (pattern changes,
      sliding entries, the comparison with the intrinsic dynamic).
    - `chattering`: a [`node_flow.relu.Chattering`][] when `stop_reason == "chattering"`.
    - `intrinsic_skipped`: why the intrinsic comparison was not done (`None` if it was).
    - `convention`: `"filippov"` or `"autodiff"`.
    """

    boundaries: Float[Array, " intervals_plus_one"]
    ts: Float[Array, "intervals saves"]
    models: AbstractReLUNetwork
    zs: Float[Array, "intervals saves paths"]
    zs_intrinsic: Float[Array, "intervals saves paths"] | None
    losses: Float[Array, "intervals saves"]
    patterns: Bool[Array, "intervals samples hidden"]
    h0: Float[Array, " hidden"]
    stop_reason: str = eqx.field(static=True)
    intervals: tuple[Interval, ...] = eqx.field(static=True, default=())
    chattering: Chattering | None = eqx.field(static=True, default=None)
    intrinsic_skipped: str | None = eqx.field(static=True, default=None)
    convention: str = eqx.field(static=True, default="filippov")

    @property
    def switch_times(self) -> Float[Array, " switches"]:
        """The kink-event times."""
        return self.boundaries[1:-1]

    @property
    def num_pattern_changes(self) -> int:
        """The number of kink events at which an entry crossed or started/stopped sliding."""
        return sum(1 for iv in self.intervals[1:] if iv.changed)

    @property
    def num_sliding_intervals(self) -> int:
        """The number of intervals on which some entry slides."""
        return sum(1 for iv in self.intervals if iv.sliding)


_CONVENTIONS = ("filippov", "autodiff")
# Accumulation point: this many kink events within `_ACCUMULATION_WINDOW · (t1 − t0)`.
# Transversal crossings of generic data are separated by O(1/(N·H)) of the training time,
# many orders above the window; a Zeno accumulation packs unboundedly many into it.
_ACCUMULATION_EVENTS = 8
_ACCUMULATION_WINDOW = 1e-6


def _check_train_args(net, X, Y, t1, saves, max_intervals, rtol, atol, margin, max_steps, conv):
    fname = "train"
    if not isinstance(net, AbstractReLUNetwork):
        raise TypeError(f"{fname}: `net` must be a node_flow.relu network (MLP, DAGNetwork).")
    X, Y = _dataset(fname, net, X, Y)
    check_finite(f"{fname}: X", X)
    check_finite(f"{fname}: Y", Y)
    check_finite(f"{fname}: the weights of `net`", net.edge_weights())

    def integer(name, value, low):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{fname}: `{name}` must be an integer ≥ {low}; got {value!r}.")
        return int(value)

    def positive(name, value, below=np.inf):
        v = float(value)
        if not (np.isfinite(v) and 0 < v < below):
            bound = f" and < {below}" if np.isfinite(below) else ""
            raise ValueError(
                f"{fname}: `{name}` must be a finite number > 0{bound}; got {value!r}."
            )
        return v

    positive("t1", t1)
    integer("saves", saves, 2)
    integer("max_intervals", max_intervals, 1)
    integer("max_steps", max_steps, 1)
    positive("rtol", rtol, 1.0)
    positive("atol", atol)
    positive("margin", margin, 1e-3)
    if conv not in _CONVENTIONS:
        raise ValueError(f"{fname}: `convention` must be one of {_CONVENTIONS}; got {conv!r}.")
    return X, Y


def _initial_state(problem, theta, margin, convention):
    """The structure at $t_0$: entries on their kink (within `margin` of the largest
    pre-activation) are classified like a kink event with no side of arrival."""
    pre = np.asarray(_pre_activations(problem, theta))
    state = KinkState((pre > 0).astype(float), [], np.zeros(pre.shape, dtype=bool))
    on_kink = np.abs(pre) <= margin * max(float(np.max(np.abs(pre), initial=0.0)), 1.0)
    if not np.any(on_kink):
        return state, [], []
    value = (np.where(on_kink, 0.0, np.inf), np.zeros(0))
    return kink_transition(problem, state, theta, pre, [], value, margin, convention, at_start=True)


@eqx.filter_jit
def _pre_activations(problem, theta):
    return jax.vmap(problem.net.with_edge_weights(theta).pre_activations)(problem.X)


@eqx.filter_jit
def _save_at(problem, structure, thetas):
    def one(theta):
        lam = sliding_gates(problem, structure, theta)
        return problem.loss(theta, gates_of(structure, lam)), lam

    return jax.vmap(one)(thetas)


def _solve(problem, structure, theta, t, t_end, saves, options):
    # Times and tolerances as arrays: traced, so a new interval does not recompile.
    as_array = lambda x: jnp.asarray(x, dtype=theta.dtype)
    out = solve_interval(
        problem,
        structure,
        theta,
        as_array(t),
        as_array(t_end),
        jnp.linspace(t, t_end, saves, dtype=theta.dtype),
        as_array(options["rtol"]),
        as_array(options["atol"]),
        solver=options["solver"],
        max_steps=options["max_steps"],
    )
    result = out["result"]
    if not bool(result == diffrax.RESULTS.successful) and not bool(
        result == diffrax.RESULTS.event_occurred
    ):
        raise FlowError(
            f"train: the parameter flow failed on [{t:.6g}, {t_end:.6g}]: "
            f"{diffrax.RESULTS[result]} after {int(out['num_steps'])} steps (raise "
            "`max_steps` or loosen rtol/atol)."
        )
    return out, bool(result == diffrax.RESULTS.event_occurred)


def _interval(problem, state, theta, t, t1, saves, margin, options):
    """Solve one interval: until the next kink event or `t1`; then the evenly spaced saves."""
    pre = _pre_activations(problem, theta)
    structure = state.structure(pre, margin)
    out, switched = _solve(problem, structure, theta, t, t1, saves, options)
    t_end = float(out["t_final"]) if switched else float(t1)
    if not switched:
        saved = out
    elif saves == 2:
        thetas = jnp.stack([theta, out["theta_final"]])
        losses, lams = _save_at(problem, structure, thetas)
        saved = dict(ts=jnp.asarray([t, t_end]), thetas=thetas, losses=losses, lams=lams)
    else:
        disarmed = eqx.tree_at(lambda s: s.armed, structure, jnp.asarray(False))
        saved, _ = _solve(problem, disarmed, theta, t, t_end, saves, options)
    row = dict(
        t0=t,
        t1=t_end,
        ts=saved["ts"],
        thetas=saved["thetas"],
        losses=saved["losses"],
        pattern=state.pattern > 0,
        sliding=list(state.sliding),
        lams=np.asarray(saved["lams"])[:, : len(state.sliding)],
        num_steps=int(out["num_steps"]),
        structure=structure,
    )
    return row, structure, out["theta_final"], switched


def _event_values(problem, structure, state, theta):
    """At an event: pre-activations, gates and the two parts of the event value."""
    pre, lam, _ = rates(problem, structure, theta)
    pre, lam = np.asarray(pre), np.asarray(lam)[: len(state.sliding)]
    sliding = np.zeros(pre.shape, dtype=bool)
    for entry in state.sliding:
        sliding[entry] = True
    signs, offsets = np.asarray(structure.signs), np.asarray(structure.offsets)
    cross = np.where(sliding, np.inf, signs * pre + offsets) / float(structure.scale)
    return pre, lam, (cross, np.minimum(lam, 1 - lam))


def _step_over_accumulation(problem, state, theta, pre, entries, margin):
    """An accumulation point of kink events under the Filippov convention: hold every
    entry involved that sits on its kink at once (the equivalent control of all of them).
    Returns the new state, or `None` if that is not a sliding solution (gates out of
    [0, 1]), which is then a genuine chattering."""
    scale = max(float(np.max(np.abs(pre), initial=0.0)), 1.0)
    near = [e for e in entries if abs(pre[e]) <= 1e3 * margin * scale]
    new_sliding = sorted(set(state.sliding) | set(near))
    trial = KinkState(state.pattern.copy(), list(new_sliding), state.handled.copy())
    for e in near:
        trial.pattern[e] = 0.0
        trial.handled[e] = True
    if settle_gates(problem, trial, theta, margin) or not near:
        return None
    return trial


def _neurons(entries, arch):
    return tuple((int(i), int(arch.hidden[v])) for i, v in entries)


def _chattering(time, entries, arch, why):
    entries = _neurons(sorted(set(entries)), arch)
    message = (
        f"train: the activation pattern chatters at t = {time:.9g}: (sample, neuron) entries "
        f"{list(entries)} {why}"
    )
    logger.warning(message)
    return Chattering(time, entries, message)


def _piecewise(problem, theta, t1, saves, max_intervals, margin, convention, options):
    """The loop over intervals; returns the interval rows, the stop reason and the
    chattering report."""
    arch = problem.net.arch
    state, changed, trapped = _initial_state(problem, theta, margin, convention)
    t, rows, events = 0.0, [], []
    if trapped and convention == "autodiff":
        why = _AUTODIFF_TRAPPED
        return rows, "chattering", _chattering(t, trapped, arch, why), state
    for _ in range(max_intervals):
        row, structure, theta, switched = _interval(
            problem, state, theta, t, t1, saves, margin, options
        )
        row["changed"] = changed
        rows.append(row)
        if not switched:
            return rows, "t1", None, state
        t = row["t1"]
        pre, lam, value = _event_values(problem, structure, state, theta)
        state, changed, trapped = kink_transition(
            problem, state, theta, pre, lam, value, margin, convention
        )
        logger.info("t = %.9g: entries %s changed; %d sliding", t, changed, len(state.sliding))
        if trapped and convention == "autodiff":
            return rows, "chattering", _chattering(t, trapped, arch, _AUTODIFF_TRAPPED), state
        events.append((t, changed))
        recent = events[-_ACCUMULATION_EVENTS:]
        if len(recent) == _ACCUMULATION_EVENTS and recent[-1][0] - recent[0][0] <= (
            _ACCUMULATION_WINDOW * t1
        ):
            involved = [e for _, ch in recent for e in ch]
            stepped = None
            if convention == "filippov":
                stepped = _step_over_accumulation(problem, state, theta, pre, involved, margin)
            if stepped is None:
                why = (
                    f"switched {_ACCUMULATION_EVENTS} times within "
                    f"{recent[-1][0] - recent[0][0]:.3g} (an accumulation point)"
                    + (
                        "; holding them on their kinks is no Filippov solution."
                        if convention == "filippov"
                        else "."
                    )
                )
                return rows, "chattering", _chattering(t, involved, arch, why), state
            logger.info("t = %.9g: accumulation point stepped over by sliding", t)
            state, events = stepped, []
    return rows, "max_intervals", None, state


_AUTODIFF_TRAPPED = (
    "are pushed onto their kink a = 0 from both sides. With the autodiff convention "
    "ReLU'(0) = 0 the flow has no solution past this time (the field at a = 0 leaves the "
    "kink, the field beyond pushes back: infinitely many switches); gradient descent with "
    "that convention zigzags across the kink, and its limit is the sliding solution of "
    "convention='filippov'."
)


def train(
    net: AbstractReLUNetwork,
    X: Float[ArrayLike, "samples inputs"],
    Y: Float[ArrayLike, "samples outputs"],
    t1: float,
    *,
    saves: int = 11,
    max_intervals: int = 1000,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    intrinsic: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    margin: float = 1e-9,
    max_steps: int = 100_000,
    convention: str = "filippov",
) -> TrainingSolution:
    r"""Train a ReLU network by gradient flow on the square loss, through its kinks.

    The loss $L(\theta) = \frac{1}{2N}\sum_i \|f_\theta(x_i) - y_i\|^2$ is smooth except where
    a pre-activation $a_{iv}(\theta)$ (sample $i$, hidden neuron $v$) is zero. Between such
    kink events the activation pattern is fixed and the flow is
    $\dot\theta = -\nabla_\theta \ell_k(\varphi(\theta))$ with $\ell_k$ the pattern's loss of the
    path-lifting ([`node_flow.relu.pattern_loss`][]). At an event, with $\alpha_\pm$ the rate
    of $a_{iv}$ under the field with ReLU'(0) = 1 ($+$) and 0 ($-$):

    - **crossing** ($\alpha_+$, $\alpha_-$ of one sign): the entry changes side;
    - **sliding** ($\alpha_- > 0 > \alpha_+$, pushed onto the kink from both sides): with
      `convention="filippov"` (default) the solution of Filippov (1988) follows the kink,
      $a_{iv} \equiv 0$, with the field $\lambda F_+ + (1 - \lambda) F_-$,
      $\lambda = \alpha_-/(\alpha_- - \alpha_+) \in [0, 1]$ (for several sliding entries,
      the equivalent control: gates $\lambda_{iv}$ in place of ReLU', solved so that every
      sliding $a_{iv}$ stays at zero; an element of the Filippov set). It leaves when
      a gate reaches 1 (to the active side) or 0 (inactive). An accumulation of events
      (`8` within $10^{-6} t_1$) is stepped over the same way, by holding the entries
      involved on their kinks. This is the limit of gradient descent as the step size goes
      to zero, whatever its ReLU'(0).
    - With `convention="autodiff"` (ReLU'(0) = 0, what frameworks' gradients use) there is
      no solution past a two-sided kink: the run stops there with `stop_reason =
      "chattering"`, and `.chattering` names the time and the `(sample, neuron)` entries.
      Transversal crossings are the same in both conventions.

    Each interval is one diffrax solve (events located by bisection; the event is a
    minimum over entries, piecewise smooth), then a second one with the event disarmed to
    save at `saves` evenly spaced times (not needed when `saves = 2`).

    With `intrinsic=True`, each fixed-pattern interval is compared with the intrinsic flow
    $\dot z = -K(z, h_0)\nabla\ell_k(z)$ ([`node_flow.relu.IntrinsicKernel`][],
    [`node_flow.intrinsic_flow`][]) from the parameter flow's $z(t_k)$; on a sliding
    interval the field is still $-\partial\varphi^\top\nabla\ell_{G(t)}$ (gated features), so
    $h$ is conserved and $\dot z = -K(z, h_0)\nabla\ell_{G(t)}(z)$ holds with the gates of
    the parameter flow: that identity is measured at the saves. Where $z$ does not
    determine $\theta^2$ (e.g. zero weights) the comparison is skipped, the reason is in
    `.intrinsic_skipped` and the parameter flow is returned.

    **Arguments:**

    - `net`: the initial network $\theta_0$; `X`, `Y`: the samples as rows.
    - `t1`: the final training time (> 0).
    - `saves` (≥ 2): save times per interval; `max_intervals` (≥ 1): the most intervals.
    - `rtol`, `atol`, `solver` (default `diffrax.Tsit5()`), `max_steps`: of each solve.
    - `margin`: relative margin of the event on the entries just handled (they start on
      their kink); entries within `margin` of the event minimum are handled together.
    - `convention`: `"filippov"` or `"autodiff"` (above).

    **Returns:** a [`node_flow.relu.TrainingSolution`][].

    **Caveat.** If all the out-weights (or in-weights) of a hidden neuron pass through zero
    together, $z$ does not determine $\theta^2$ there and the intrinsic flow loses accuracy
    near it. The parameter flow is unaffected.
    """
    X, Y = _check_train_args(
        net, X, Y, t1, saves, max_intervals, rtol, atol, margin, max_steps, convention
    )
    t1 = float(t1)
    h0 = conservation_laws(net)
    problem = Problem(net, X, Y)
    solver = diffrax.Tsit5() if solver is None else solver
    options = dict(rtol=rtol, atol=atol, solver=solver, max_steps=max_steps)
    rows, stop_reason, chattering, _ = _piecewise(
        problem, net.edge_weights(), t1, saves, max_intervals, margin, convention, options
    )
    if not rows:  # stopped at t0: a one-point interval keeps the shapes uniform
        theta = net.edge_weights()
        rows = [_still(problem, theta, saves, margin)]
    return _assemble(
        problem, net, rows, h0, stop_reason, chattering, intrinsic, convention, options
    )


def _still(problem, theta, saves, margin):
    pre = _pre_activations(problem, theta)
    state = KinkState(np.asarray(pre > 0, dtype=float), [], np.zeros(pre.shape, dtype=bool))
    structure = state.structure(pre, margin)
    loss = problem.loss(theta, structure.pattern)
    return dict(
        t0=0.0,
        t1=0.0,
        ts=jnp.zeros(saves),
        thetas=jnp.broadcast_to(theta, (saves,) + theta.shape),
        losses=jnp.full(saves, loss),
        pattern=state.pattern > 0,
        sliding=[],
        lams=np.zeros((saves, 0)),
        num_steps=0,
        changed=[],
        structure=structure,
    )


def _assemble(problem, net, rows, h0, stop_reason, chattering, intrinsic, convention, options):
    arch = net.arch
    thetas = jnp.stack([r["thetas"] for r in rows])
    zs = jax.vmap(jax.vmap(lambda th: path_products(th, arch)))(thetas)
    models = jax.vmap(jax.vmap(net.with_edge_weights))(thetas)
    compared = [(None, None, None, "not computed (intrinsic=False)")] * len(rows)
    skipped = None
    if intrinsic:
        structures = [r["structure"] for r in rows]
        compared = compare_intervals(problem, rows, structures, zs, h0, options)
        notes = [c[3] for c in compared if c[3]]
        if notes:
            skipped = f"{len(notes)} of {len(rows)} intervals: {notes[0]}"
            logger.warning("train: intrinsic comparison %s", skipped)
    intervals = []
    for r, (_, err, kind, note) in zip(rows, compared):
        lams = r["lams"]
        intervals.append(
            Interval(
                start=float(r["t0"]),
                end=float(r["t1"]),
                changed=_neurons(r["changed"], arch),
                sliding=_neurons(r["sliding"], arch),
                gate_range=(float(lams.min()), float(lams.max())) if lams.size else None,
                intrinsic_error=err,
                intrinsic_kind=kind if err is not None else None,
                intrinsic_note=note,
                num_steps=r["num_steps"],
            )
        )
    zs_intr = None
    if intrinsic:
        zs_intr = jnp.stack([z if c[0] is None else c[0] for z, c in zip(zs, compared)])
    return TrainingSolution(
        boundaries=jnp.asarray([rows[0]["t0"]] + [r["t1"] for r in rows]),
        ts=jnp.stack([jnp.asarray(r["ts"]) for r in rows]),
        models=models,
        zs=zs,
        zs_intrinsic=zs_intr,
        losses=jnp.stack([r["losses"] for r in rows]),
        patterns=jnp.stack([jnp.asarray(r["pattern"]) for r in rows]),
        h0=h0,
        stop_reason=stop_reason,
        intervals=tuple(intervals),
        chattering=chattering,
        intrinsic_skipped=skipped,
        convention=convention,
    )
