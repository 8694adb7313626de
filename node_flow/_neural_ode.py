r"""The linear neural ODE: a weight function $A: [0,1] \to \mathbb{R}^{n\times n}$ on a grid,
lifted to $z = \Phi(1, 0)$ by solving $\partial_s \Phi = A(s)\Phi$ with diffrax."""

import numbers

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Real, Shaped

from ._basis import AbstractBasis, as_basis
from ._checks import as_count, as_real_array, as_scale, CountLike, is_concrete, ScaleLike
from ._custom_types import ScalarLike
from ._lifting import AbstractLifting
from ._residual import ResidualLinearNetwork


_DEFAULT_TOL = 1e-10
# Automatic `max_steps` of the forward solve: the solver restarts at each of the m - 1 kinks
# (jump times), so it needs a few steps per cell; 64 per cell (and at least 4096) leaves a wide
# margin at the default tolerance without letting a stiff solve run unbounded.
_STEPS_PER_CELL = 64
_MIN_MAX_STEPS = 4096


class LinearNeuralODE(AbstractLifting):
    r"""The linear neural ODE with weight function $A(s)$ sampled on a uniform grid.

    $A$ is given by its values `A[i]` $= A(s_i)$ at the nodes $s_i = i/m$ of $m$ cells and
    turned into a function $A(s) = \sum_i A_i \psi_i(s)$ by a basis
    ([`node_flow.neural_ode.PiecewiseLinear`][], the default, or
    [`node_flow.neural_ode.PiecewiseConstant`][]). The lifting is the state-transition
    matrix $z = \varphi(A) = \Phi(1, 0)$ of $\partial_s \Phi(s, 0) = A(s) \Phi(s, 0)$,
    $\Phi(0, 0) = I$, solved by diffrax (adaptive steps clipped to the grid nodes, so no step
    straddles a kink).

    Training ([`node_flow.gradient_flow`][]) follows the $L^2$ gradient flow
    $\partial_t A = -\nabla_A L$, $\nabla_A L(s) = \Phi(1,s)^\top \nabla\ell(z)
    \Phi(s,0)^\top$ (THEORY §3), restricted to the grid functions: the Euclidean gradient
    of the node values is mapped through the inverse $L^2$ Gram (mass) matrix of the basis,
    so refining the grid does not change the speed of training. The Euclidean gradient is
    taken by reverse mode through the forward solve with
    `diffrax.RecursiveCheckpointAdjoint` by default (discretize-then-optimize): it is the
    exact gradient of the computed $z$, so the lifted flow matches $\dot z = -M\nabla\ell$
    to solver tolerance, where an adjoint ODE would add its own error.

    **Arguments:**

    - `A`: node values, shape `(m + 1, n, n)`, $m \ge 1$, real floating, finite.
    - `interpolation`: the basis, an [`node_flow.neural_ode.AbstractBasis`][] or its
      shorthand `"linear"` (default) or `"constant"`.
    - `solver`: a `diffrax.AbstractSolver` for the forward solve (default `diffrax.Tsit5()`).
    - `stepsize_controller`: a `diffrax.AbstractStepSizeController` (default
      `diffrax.PIDController(rtol, atol)`); an adaptive one is clipped to the grid nodes.
      It is a static setting, so it must be hashable (tolerances as Python floats).
    - `rtol`, `atol`: shorthand for the default PID controller (default $10^{-10}$);
      not together with `stepsize_controller`.
    - `adjoint`: a `diffrax.AbstractAdjoint` (default `diffrax.RecursiveCheckpointAdjoint()`).
    - `max_steps`: of the forward solve (default `None`: `max(4096, 64 m)`, recomputed for
      each grid, e.g. after `refine()`).
    - `dt0`: the initial step (adaptive controllers; default: diffrax's choice) or the step
      (constant step sizes; default: the cell width $1/m$).
    - `forward_autodiff`: shorthand for `adjoint=diffrax.ForwardMode()` (supports `jax.jvp`,
      not reverse mode); see `forward_mode()`.

    Every setting is kept by `refine()` and `forward_mode()`.
    """

    A: Float[Array, "nodes n n"]
    basis: AbstractBasis = eqx.field(static=True)
    solver: diffrax.AbstractSolver = eqx.field(static=True)
    stepsize_controller: diffrax.AbstractStepSizeController = eqx.field(static=True)
    adjoint: diffrax.AbstractAdjoint = eqx.field(static=True)
    max_steps: int | None = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)

    def __init__(
        self,
        A: Shaped[ArrayLike, "..."],
        interpolation: str | AbstractBasis = "linear",
        *,
        solver: diffrax.AbstractSolver | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        rtol: ScaleLike | None = None,
        atol: ScaleLike | None = None,
        adjoint: diffrax.AbstractAdjoint | None = None,
        max_steps: CountLike | None = None,
        dt0: ScaleLike | None = None,
        forward_autodiff: bool = False,
    ):
        fname = "LinearNeuralODE"
        A = as_real_array(fname, "A", A, ndim=3)
        if A.shape[1] != A.shape[2]:
            raise ValueError(
                f"{fname}: `A` must hold square node values of shape (m + 1, n, n); got {A.shape}."
            )
        if A.shape[0] < 2:
            raise ValueError(
                f"{fname}: the grid needs m ≥ 1 cells (m + 1 ≥ 2 nodes); got {A.shape[0]} node(s)."
            )
        self.A = A
        self.basis = as_basis(fname, interpolation)
        self.solver = _strategy(fname, "solver", solver, diffrax.AbstractSolver, diffrax.Tsit5())
        self.stepsize_controller = _controller(fname, stepsize_controller, rtol, atol)
        forward = diffrax.ForwardMode()
        if forward_autodiff and adjoint is not None and adjoint != forward:
            raise ValueError(
                f"{fname}: `forward_autodiff=True` means `adjoint=diffrax.ForwardMode()`; "
                f"got also adjoint={adjoint!r}. Pass one of the two."
            )
        default = forward if forward_autodiff else diffrax.RecursiveCheckpointAdjoint()
        self.adjoint = _strategy(fname, "adjoint", adjoint, diffrax.AbstractAdjoint, default)
        self.max_steps = None if max_steps is None else as_count(fname, "max_steps", max_steps)
        self.dt0 = None if dt0 is None else as_scale(fname, "dt0", dt0, static=True)

    @property
    def m(self) -> int:
        """The number of grid cells."""
        return self.A.shape[-3] - 1

    @property
    def n(self) -> int:
        return self.A.shape[-1]

    @property
    def nodes(self) -> Float[Array, " nodes"]:
        return jnp.linspace(0.0, 1.0, self.m + 1, dtype=self.A.dtype)

    @property
    def interpolation(self) -> str:
        """The basis's shorthand name (`"linear"`, `"constant"`)."""
        return self.basis.name

    @property
    def rtol(self) -> float | None:
        """The forward solve's relative tolerance (`None` for a non-PID controller)."""
        return getattr(self.stepsize_controller, "rtol", None)

    @property
    def atol(self) -> float | None:
        """The forward solve's absolute tolerance (`None` for a non-PID controller)."""
        return getattr(self.stepsize_controller, "atol", None)

    @property
    def forward_autodiff(self) -> bool:
        """Whether the forward solve uses `diffrax.ForwardMode`."""
        return isinstance(self.adjoint, diffrax.ForwardMode)

    def replace(self, **changes) -> "LinearNeuralODE":
        """A copy with some of the constructor's arguments changed (`A`, `interpolation`,
        `solver`, `stepsize_controller`, `adjoint`, `max_steps`, `dt0`); all others kept."""
        settings = dict(
            A=self.A,
            interpolation=self.basis,
            solver=self.solver,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            dt0=self.dt0,
        )
        unknown = set(changes) - set(settings)
        if unknown:
            raise TypeError(f"LinearNeuralODE.replace: unknown settings {sorted(unknown)}.")
        settings.update(changes)
        return LinearNeuralODE(settings.pop("A"), settings.pop("interpolation"), **settings)

    def at(self, s: Real[ArrayLike, "*batch"]) -> Float[Array, "*batch n n"]:
        r"""The weight function $A(s)$ at depth(s) `s` $\in [0, 1]$.

        $A$ is defined on $[0, 1]$ only: `s` outside it (or NaN) raises a `ValueError`
        naming the value (under `jit`, an `eqx.error_if` with the same message); it is never
        extrapolated."""
        s = _check_depths("LinearNeuralODE.at", "s", s, self.A.dtype)
        flat = jax.vmap(lambda x: self.basis.interpolate(self.A, x))(s.reshape(-1))
        out = flat.reshape(s.shape + (self.n, self.n))
        return _guard_depths("LinearNeuralODE.at", "s", out, s)

    def transition(self, s0: ScalarLike = 0.0, s1: ScalarLike = 1.0) -> Float[Array, "n n"]:
        r"""$\Phi(s_1, s_0)$, solving $\partial_s \Phi = A(s)\Phi$, $\Phi(s_0) = I$, for
        $s_0, s_1 \in [0, 1]$ (outside it a `ValueError`, as for `at`; $s_1 < s_0$ integrates
        backwards, giving $\Phi(s_0, s_1)^{-1}$).

        A forward solve that fails (it runs out of `max_steps`) raises a `RuntimeError`
        eagerly; under `jit` it returns NaN, which a training flow reports as a failure
        (a host-callback error there would keep the flow out of the compilation cache)."""
        dtype = self.A.dtype
        s0 = _check_depths("LinearNeuralODE.transition", "s0", s0, dtype)
        s1 = _check_depths("LinearNeuralODE.transition", "s1", s1, dtype)
        if s0.ndim or s1.ndim:
            raise ValueError("LinearNeuralODE.transition: `s0`, `s1` must be scalars.")
        basis = self.basis
        term = diffrax.ODETerm(lambda s, Phi, A: basis.interpolate(A, s) @ Phi)
        controller, dt0 = self.stepsize_controller, self.dt0
        if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
            controller = diffrax.ClipStepSizeController(
                controller, jump_ts=basis.jump_ts(self.m, dtype)
            )
        elif dt0 is None:
            dt0 = 1.0 / self.m
        if dt0 is not None:
            dt0 = jnp.where(s1 >= s0, dt0, -dt0).astype(dtype)
        sol = diffrax.diffeqsolve(
            term,
            self.solver,
            s0,
            s1,
            dt0,
            jnp.eye(self.n, dtype=dtype),
            args=self.A,
            stepsize_controller=controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps or max(_MIN_MAX_STEPS, _STEPS_PER_CELL * self.m),
            throw=False,
        )
        Phi = _solved("LinearNeuralODE.transition", sol)
        Phi = _guard_depths("LinearNeuralODE.transition", "s0", Phi, s0)
        return _guard_depths("LinearNeuralODE.transition", "s1", Phi, s1)

    def lift(self) -> Float[Array, "n n"]:
        r"""$z = \Phi(1, 0)$."""
        return self.transition(0.0, 1.0)

    def forward_mode(self) -> "LinearNeuralODE":
        """A copy whose forward solve uses `diffrax.ForwardMode` (supports `jax.jvp`); every
        other setting kept."""
        return self.replace(adjoint=diffrax.ForwardMode())

    def precondition(self, grads: PyTree[Array]) -> PyTree[Array]:
        r"""Node-value gradient $\mapsto$ $L^2$ gradient: $g \mapsto \mathcal{M}^{+} g$ with
        $\mathcal M_{ij} = \int \psi_i \psi_j$ the basis's mass matrix (see
        [`node_flow.neural_ode.AbstractBasis`][])."""
        return eqx.tree_at(lambda t: t.A, grads, self.basis.precondition(grads.A))

    def refine(self) -> "LinearNeuralODE":
        """The same weight function on a grid of `2 m` cells (new nodes at the midpoints),
        with every other setting (basis, solver, controller, adjoint, `max_steps`, `dt0`)
        kept."""
        return self.replace(A=self.basis.refine(self.A))

    def conservation_law(self) -> Float[Array, "nodes n n"]:
        r"""The conservation law at the nodes,
        $\Lambda(s_i) = \partial_s(A + A^\top)(s_i) + A^\top A(s_i) - A A^\top(s_i)$.

        $\partial_s$ by second-order finite differences at every node: centred inside,
        $(\mp 3 f_0 \pm 4 f_1 \mp f_2)/(2h)$ one-sided at the two ends. Needs $m \ge 2$.
        Along the training flow it is conserved up to the $O(h^2)$ discretization error;
        relaxed balanced means $\Lambda = \lambda(s) I$.
        """
        if self.m < 2:
            raise ValueError("conservation_law: needs m ≥ 2 cells for second-order differences.")
        A = self.A
        S = A + jnp.swapaxes(A, -1, -2)
        inv2h = self.m / 2.0
        first = (-3 * S[0] + 4 * S[1] - S[2]) * inv2h
        last = (3 * S[-1] - 4 * S[-2] + S[-3]) * inv2h
        dS = jnp.concatenate([first[None], (S[2:] - S[:-2]) * inv2h, last[None]])
        AT = jnp.swapaxes(A, -1, -2)
        return dS + AT @ A - A @ AT

    def to_residual(self, L: CountLike) -> ResidualLinearNetwork:
        r"""The depth-$L$ residual network $U_k = I + A(s_{k-1/2})/L$ sampling $A$ at the
        cell midpoints $s_{k-1/2} = (k - \frac12)/L$. `L`: an integer $\ge 1$ (Python, NumPy
        or concrete JAX)."""
        L = as_count("LinearNeuralODE.to_residual", "L", L)
        s = (jnp.arange(L, dtype=self.A.dtype) + 0.5) / L
        return ResidualLinearNetwork(self.at(s))


def _strategy(fname, argname, value, cls, default):
    if value is None:
        return default
    if not isinstance(value, cls):
        raise TypeError(
            f"{fname}: `{argname}` must be a `diffrax.{cls.__name__}`; got {type(value).__name__}."
        )
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"{fname}: `{argname}` is a static setting and must be hashable; {value!r} holds "
            "arrays. Give its numbers as Python floats."
        ) from None
    return value


def _controller(fname, controller, rtol, atol):
    if controller is not None and (rtol is not None or atol is not None):
        raise ValueError(
            f"{fname}: give either `stepsize_controller` or `rtol`/`atol` (the shorthand for "
            "`diffrax.PIDController(rtol, atol)`), not both."
        )
    if controller is not None:
        return _strategy(
            fname, "stepsize_controller", controller, diffrax.AbstractStepSizeController, None
        )
    tols = {}
    for name, value in (("rtol", rtol), ("atol", atol)):
        tols[name] = _DEFAULT_TOL if value is None else as_scale(fname, name, value, static=True)
    if tols["rtol"] >= 1:
        raise ValueError(f"{fname}: `rtol` must be < 1; got {tols['rtol']}.")
    return diffrax.PIDController(**tols)


def _check_depths(fname: str, argname: str, s, dtype) -> Array | np.ndarray:
    """`s` as an array of `dtype`; concrete values outside $[0, 1]$ (or NaN) refused."""
    if isinstance(s, (bool, np.bool_)) or not isinstance(
        s, (numbers.Real, np.ndarray, jax.Array, list, tuple)
    ):
        raise TypeError(f"{fname}: `{argname}` must be a real depth in [0, 1]; got {s!r}.")
    # A concrete `s` stays a NumPy array: checked here on the host, and never guarded
    # inside the computation (an `eqx.error_if` host callback would keep every program that
    # lifts a `LinearNeuralODE` out of the persistent compilation cache).
    s = jnp.asarray(s) if isinstance(s, jax.core.Tracer) else np.asarray(s)
    if not jnp.issubdtype(s.dtype, jnp.floating) and not jnp.issubdtype(s.dtype, jnp.integer):
        raise TypeError(f"{fname}: `{argname}` must be real; got dtype {s.dtype}.")
    s = s.astype(dtype)
    if is_concrete(s):
        outside = np.asarray(~((s >= 0) & (s <= 1))).reshape(-1)
        if outside.any():
            bad = np.asarray(s).reshape(-1)[outside][:5]
            raise ValueError(
                f"{fname}: `{argname}` must lie in [0, 1], the domain of the weight function "
                f"(it is not extrapolated); got {argname} = "
                f"{bad[0] if bad.size == 1 else bad.tolist()}."
            )
    return s


def _solved(fname: str, sol: diffrax.Solution) -> Array:
    """The end point of a forward solve: a `RuntimeError` for a failed concrete solve;
    NaN for a failed traced one."""
    ok = sol.result == diffrax.RESULTS.successful
    if is_concrete(ok):
        if not bool(ok):
            raise RuntimeError(
                f"{fname}: the forward solve failed ({diffrax.RESULTS[sol.result]}); "
                "raise `max_steps` (`LinearNeuralODE(..., max_steps=...)`)."
            )
        return sol.ys[-1]
    return jnp.where(ok, sol.ys[-1], jnp.nan)


def _guard_depths(fname: str, argname: str, out: Array, s: Array | np.ndarray) -> Array:
    """Under `jit`: `out` guarded by `eqx.error_if` against `s` outside $[0, 1]$."""
    if is_concrete(s):
        return out
    message = (
        f"{fname}: `{argname}` must lie in [0, 1], the domain of the weight function "
        "(it is not extrapolated)."
    )
    return eqx.error_if(out, jnp.any(~((s >= 0) & (s <= 1))), message)
