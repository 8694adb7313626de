"""Training a ReLU network: the square loss on a fixed activation pattern, the
pattern-change event, and the piecewise parameter and intrinsic flows."""

import logging

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._flow import gradient_flow, intrinsic_flow
from .._solution import RESULTS
from ._architecture import Architecture
from ._lifting import path_features
from ._network import AbstractReLUNetwork, conservation_laws
from ._rescaling import IntrinsicKernel


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


class TrainingSolution(eqx.Module):
    r"""Piecewise training of a ReLU network, one row per interval of fixed pattern.

    **Fields:**

    - `boundaries`: the interval ends $t_0 < t_1 < \dots < t_K$; the inner ones are the
      pattern-change times (root-found event times).
    - `ts`: `(K, saves)` save times, evenly spaced on each interval.
    - `models`: the network with leading `(K, saves)` axes (parameter flow).
    - `zs`: `(K, saves, d)`, $z(t) = \varphi(\theta(t))$ along the parameter flow.
    - `zs_intrinsic`: `(K, saves, d)`, the intrinsic flow $\dot z = -K(z, h_0)\nabla\ell_k(z)$,
      continued across intervals from its own state (`None` if not computed).
    - `losses`: `(K, saves)` the loss along the parameter flow.
    - `patterns`: `(K, samples, hidden)` the activation pattern on each interval.
    - `h0`: the conservation laws at the start.
    - `stop_reason`: why training stopped (`"t1"`, `"max_intervals"`, `"chattering"`).
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

    @property
    def switch_times(self) -> Float[Array, " switches"]:
        """The pattern-change times."""
        return self.boundaries[1:-1]


def _disabled(event):
    """The same event with every entry offset to +inf: it never fires."""
    if event is None:
        return None
    return eqx.tree_at(lambda e: e.offsets, event, jnp.full_like(event.offsets, jnp.inf))


def _event_for(net, X, previous, margin):
    """The event of the next interval; `previous` is the event of the one that just ended."""
    pre = jax.vmap(net.pre_activations)(X)
    scale = jnp.maximum(jnp.max(jnp.abs(pre)), 1.0)
    if previous is None:
        signs = jnp.where(pre > 0, 1.0, -1.0).astype(pre.dtype)
        at_zero = pre == 0
    else:
        # The entries that triggered the event (value ~ 0 at the event time) change sign.
        value = previous.signs * pre + previous.offsets
        at_zero = value <= jnp.min(value) + margin * scale
        signs = jnp.where(at_zero, -previous.signs, previous.signs)
    offsets = jnp.where(at_zero, margin * scale - signs * pre, 0.0)
    return PatternChange(X, signs, offsets), signs > 0


def train(
    net: AbstractReLUNetwork,
    X: Float[ArrayLike, "samples inputs"],
    Y: Float[ArrayLike, "samples outputs"],
    t1: float,
    *,
    saves: int = 11,
    max_intervals: int = 20,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    intrinsic: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    margin: float = 1e-9,
    max_steps: int = 100_000,
) -> TrainingSolution:
    r"""Train a ReLU network by gradient flow on the square loss, interval by interval.

    On each interval $[t_k, t_{k+1}]$ the activation pattern on `X` is fixed, the loss is
    a function $\ell_k(z)$ of the path-lifting ([`node_flow.relu.pattern_loss`][]) and:

    1. the parameter flow $\dot\theta = -\nabla_\theta \ell_k(\varphi(\theta))$ runs with
       [`node_flow.gradient_flow`][] until a pre-activation crosses zero
       ([`node_flow.relu.PatternChange`][], a root-found diffrax event) or $t_1$;
    2. it is solved again from $t_k$ to the event time $t_{k+1}$ with `saves` evenly spaced
       save times, which also gives $\theta(t_{k+1})$ to restart from with the new pattern
       (the entries that crossed zero flip). The event is kept but disabled (offsets
       $+\infty$), so both solves share one compilation;
    3. with `intrinsic=True`, the intrinsic flow $\dot z = -K(z, h(\theta_0))\nabla\ell_k(z)$
       ([`node_flow.relu.IntrinsicKernel`][]) runs over the same interval with
       [`node_flow.intrinsic_flow`][], continued from its own state at $t_k$. The
       pattern-change times come from the parameter flow: they are not a function of $z$.

    **Arguments:**

    - `net`: the initial network $\theta_0$; `X`, `Y`: the samples as rows.
    - `t1`: the final training time.
    - `saves`: save times per interval; `max_intervals`: the most intervals simulated.
    - `rtol`, `atol`, `solver`, `max_steps`: passed to the flows.
    - `margin`: relative margin of the event at a crossing just handled (see
      [`node_flow.relu.PatternChange`][]); an interval shorter than `margin · t1` means the
      pattern chatters (a sliding, non-transversal crossing) and training stops there.

    **Caveat.** If all the out-weights (or in-weights) of a hidden neuron pass through zero
    together (generic when it has a single out-edge, e.g. a last hidden layer feeding one
    output), all its paths vanish at that instant, $z$ does not determine $\theta^2$ there,
    and the intrinsic flow in $z$ loses accuracy near it (errors of order solver noise
    divided by the vanishing weight). The parameter flow is unaffected.

    **Returns:** a [`node_flow.relu.TrainingSolution`][].
    """
    X, Y = _dataset("train", net, X, Y)
    if saves < 2:
        raise ValueError(f"train: `saves` must be at least 2; got {saves}.")
    h0 = conservation_laws(net)
    kernel = IntrinsicKernel(h0, net.arch)
    has_hidden = len(net.arch.hidden) > 0
    options = dict(rtol=rtol, atol=atol, solver=solver, max_steps=max_steps)
    t, t1 = 0.0, float(t1)
    z_intr = net.lift()
    event = None
    rows = []
    stop_reason = "max_intervals"
    for k in range(max_intervals):
        if has_hidden:
            event, pattern = _event_for(net, X, event, margin)
        else:
            pattern = jnp.zeros((X.shape[0], 0), dtype=bool)
        loss = pattern_loss(net, X, Y, pattern)
        # Same save-grid shape and event structure in both solves: one compilation.
        grid = jnp.linspace(t, t1, saves)
        probe = gradient_flow(net, loss, t1, t0=t, ts=grid, event=event, **options)
        t_end = float(probe.t_final)
        switched = bool(probe.result == RESULTS.event_occurred)
        ts = jnp.linspace(t, t_end, saves)
        sol = gradient_flow(net, loss, t_end, t0=t, ts=ts, event=_disabled(event), **options)
        row = dict(
            t0=t,
            t1=t_end,
            ts=sol.ts,
            models=sol.models,
            zs=sol.zs,
            losses=sol.losses,
            pattern=pattern,
            zs_intrinsic=None,
        )
        if intrinsic:
            isol = intrinsic_flow(z_intr, loss, kernel, t_end, t0=t, ts=ts, **options)
            row["zs_intrinsic"] = isol.zs
            z_intr = isol.zs[-1]
        rows.append(row)
        logger.info("interval %d: [%.6g, %.6g], pattern change: %s", k, t, t_end, switched)
        net = jax.tree.map(lambda x: x[-1], sol.models)
        if not switched:
            stop_reason = "t1"
            break
        if t_end - t < margin * t1 and k > 0:
            stop_reason = "chattering"
            logger.warning("train: the activation pattern chatters at t = %.6g; stopping.", t_end)
            break
        t = t_end

    stack = lambda key: jnp.stack([r[key] for r in rows])
    return TrainingSolution(
        boundaries=jnp.asarray([rows[0]["t0"]] + [r["t1"] for r in rows]),
        ts=stack("ts"),
        models=jax.tree.map(lambda *x: jnp.stack(x), *[r["models"] for r in rows]),
        zs=stack("zs"),
        zs_intrinsic=stack("zs_intrinsic") if intrinsic else None,
        losses=stack("losses"),
        patterns=stack("pattern"),
        h0=h0,
        stop_reason=stop_reason,
    )
