r"""The gradient flow of a ReLU network on one interval of fixed activation structure:
a fixed pattern on most (sample, neuron) entries and a *sliding* set of entries held on
their kink $a_{iv} = 0$ by the Filippov convex combination of the two one-sided fields.

The network with gates $G \in [0, 1]^{N \times H}$ replacing its ReLUs
($\sigma(a_{iv}) \to G_{iv} a_{iv}$, see `AbstractReLUNetwork.gated`) has the smooth loss
$L_G(\theta)$. On the pattern entries $G_{iv} \in \{0, 1\}$; on the sliding entries
$G_{iv} = \lambda_{iv}$ solves the sliding condition
$$\frac{d}{dt} a_{iv}\big(\theta; G(\lambda)\big) = \partial_\theta a_{iv} \cdot
\big(-\nabla_\theta L_{G(\lambda)}(\theta)\big) = 0 \quad \text{for every sliding } (i, v).$$
With one sliding entry this is Filippov's convex combination
$\lambda F_+ + (1 - \lambda) F_-$ of the fields with ReLU'(0) = 1 and 0. With several it is
Utkin's equivalent control: the field is multilinear in $\lambda$, so for
$\lambda \in [0, 1]^k$ it is a convex combination of the $2^k$ one-sided fields, an element
of the Filippov set. For two-layer networks the condition is affine in $\lambda$ up to the
drift of $a_{iv}$ off zero (of the order of the solver tolerance): one chord-Newton step
solves it; deeper networks take the remaining steps.

The state is the vector of edge weights (the order of `arch.edges`).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from ._network import AbstractReLUNetwork


# Chord-Newton steps for λ (the Jacobian is formed once, at λ = 1/2). Two-layer networks
# need one (the condition is affine in λ); three steps leave a multilinear residual of
# (κ·|Δλ|)^4 for a contraction κ < 1, below 1e-12 for the networks of the experiments.
_NEWTON_STEPS = 3
# Event localisation by bisection on [t_prev, t_next] of the step that crossed: the event
# is a minimum over entries, piecewise smooth with flat pieces (an entry of a neuron that
# receives no gradient), where Newton's method divides by a zero derivative. 1e-14 is a
# few ulps of t ~ 1; the event value is relative to the largest pre-activation.
_ROOT_RTOL = 1e-14
_ROOT_ATOL = 1e-13


class Structure(eqx.Module):
    """The activation structure of one interval (arrays, so a new one does not recompile).

    - `pattern`: `(N, H)` 0/1 gates on the non-sliding entries.
    - `rows`, `cols`, `mask`: the sliding entries `(rows[j], cols[j])` where `mask[j]`;
      padded with `rows = N` (dropped by the scatter) to a static capacity.
    - `signs`, `offsets`, `scale`: the crossing event of the non-sliding entries,
      $\\min_{iv} (s_{iv} a_{iv} + o_{iv}) / \\text{scale}$ (see `_crossing_event`).
    - `armed`: whether the event is active (a disarmed event lets the same compiled solve
      save on a known interval).
    """

    pattern: Float[Array, "samples hidden"]
    rows: Int[Array, " capacity"]
    cols: Int[Array, " capacity"]
    mask: Bool[Array, " capacity"]
    signs: Float[Array, "samples hidden"]
    offsets: Float[Array, "samples hidden"]
    scale: Float[Array, ""]
    armed: Bool[Array, ""]


class Problem(eqx.Module):
    """The network structure (weights replaced by the state) and the data."""

    net: AbstractReLUNetwork
    X: Float[Array, "samples inputs"]
    Y: Float[Array, "samples outputs"]

    def forward(self, theta, gates):
        """Outputs `(N, outputs)` and pre-activations `(N, H)` of the gated network."""
        net = self.net.with_edge_weights(theta)
        return jax.vmap(net.gated)(self.X, gates)

    def loss(self, theta, gates):
        out, _ = self.forward(theta, gates)
        return jnp.sum((out - self.Y) ** 2) / (2 * self.X.shape[0])

    def field(self, theta, gates):
        r"""$-\nabla_\theta L_G(\theta)$."""
        return -jax.grad(self.loss)(theta, gates)

    def pre_rate(self, theta, gates):
        r"""$\dot a = \partial_\theta a(\theta; G) \cdot F$ with $F = -\nabla_\theta L_G$
        (one forward-mode pass), and $F$."""
        F = self.field(theta, gates)
        _, rate = jax.jvp(lambda th: self.forward(th, gates)[1], (theta,), (F,))
        return rate, F


def gates_of(structure: Structure, lam):
    """The gate matrix: the pattern with the sliding entries set to `lam`."""
    return structure.pattern.at[structure.rows, structure.cols].set(lam, mode="drop")


@eqx.filter_jit
def sliding_gates(problem: Problem, structure: Structure, theta):
    r"""λ on the sliding entries (1/2 on padding), by chord-Newton on $\dot a_S(\lambda) = 0$."""
    s = structure
    if s.rows.shape[0] == 0:
        return jnp.zeros((0,), dtype=theta.dtype)
    rows = jnp.where(s.mask, s.rows, 0)

    def residual(lam):
        rate, _ = problem.pre_rate(theta, gates_of(s, lam))
        return jnp.where(s.mask, rate[rows, s.cols], lam - 0.5)

    lam = jnp.full(s.rows.shape, 0.5, dtype=theta.dtype)
    J = jax.jacfwd(residual)(lam)
    for _ in range(_NEWTON_STEPS):
        lam = lam - jnp.linalg.solve(J, residual(lam))
    return lam


def vector_field(problem: Problem, structure: Structure, theta):
    """The Filippov field on the interval."""
    lam = sliding_gates(problem, structure, theta)
    return problem.field(theta, gates_of(structure, lam))


def event_value(problem: Problem, structure: Structure, theta):
    r"""Positive inside the interval's region; crosses zero when a non-sliding entry reaches
    its kink, $s_{iv} a_{iv} + o_{iv} = 0$, or a sliding gate reaches 0 or 1 (the entry leaves
    the kink to the inactive or active side)."""
    s = structure
    lam = sliding_gates(problem, s, theta)
    _, pre = problem.forward(theta, gates_of(s, lam))
    sliding = jnp.zeros(pre.shape, bool).at[s.rows, s.cols].set(s.mask, mode="drop")
    crossing = jnp.where(sliding, jnp.inf, s.signs * pre + s.offsets) / s.scale
    leaving = jnp.where(s.mask, jnp.minimum(lam, 1 - lam), jnp.inf)
    value = jnp.minimum(jnp.min(crossing, initial=jnp.inf), jnp.min(leaving, initial=jnp.inf))
    return jnp.where(s.armed, value, 1.0)


@eqx.filter_jit
def solve_interval(problem, structure, theta0, t0, t1, ts, rtol, atol, *, solver, max_steps):
    """One diffrax solve from `t0` until `t1` or the structure's event.

    Returns the save times, the states, losses and sliding gates at `ts`, the final time
    and state, the diffrax result and the number of steps."""

    # diffrax traces the vector field, the event and the save function several times
    # (initial step, stages, root find); jitted closures are traced once and reused.
    @eqx.filter_jit
    def vf_jit(theta, problem, structure):
        return vector_field(problem, structure, theta)

    @eqx.filter_jit
    def cond_jit(theta, problem, structure):
        return event_value(problem, structure, theta)

    @eqx.filter_jit
    def save_jit(theta, problem, structure):
        lam = sliding_gates(problem, structure, theta)
        return theta, problem.loss(theta, gates_of(structure, lam)), lam

    vf = lambda t, theta, args: vf_jit(theta, problem, structure)
    cond = lambda t, y, args, **kwargs: cond_jit(y, problem, structure)
    save = lambda t, theta, args: save_jit(theta, problem, structure)

    root = optx.Bisection(rtol=_ROOT_RTOL, atol=_ROOT_ATOL)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        solver,
        t0,
        t1,
        None,
        theta0,
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts, fn=save), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(cond, root_finder=root),
        max_steps=max_steps,
        throw=False,
    )
    (thetas, losses, lams), final = sol.ys
    return dict(
        ts=sol.ts[0],
        thetas=thetas,
        losses=losses,
        lams=lams,
        t_final=sol.ts[1][0],
        theta_final=final[0],
        result=sol.result,
        event=sol.event_mask,
        num_steps=sol.stats["num_steps"],
    )


@eqx.filter_jit
def rates(problem: Problem, structure: Structure, theta):
    """Pre-activations, sliding gates and pre-activation rates under the interval's field."""
    lam = sliding_gates(problem, structure, theta)
    G = gates_of(structure, lam)
    _, pre = problem.forward(theta, G)
    rate, _ = problem.pre_rate(theta, G)
    return pre, lam, rate
