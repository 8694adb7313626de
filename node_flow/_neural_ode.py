r"""The linear neural ODE: a weight function $A: [0,1] \to \mathbb{R}^{n\times n}$ on a grid,
lifted to $z = \Phi(1, 0)$ by solving $\partial_s \Phi = A(s)\Phi$ with diffrax."""

from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._checks import check_finite
from ._lifting import AbstractLifting
from ._residual import ResidualLinearNetwork


_INTERPOLATIONS = ("linear", "constant")


def _mass_matrix(m: int) -> np.ndarray:
    r"""The $L^2$ Gram matrix $\int_0^1 \psi_i \psi_j$ of the hat functions on $m$ cells."""
    h = 1.0 / m
    M = np.zeros((m + 1, m + 1))
    idx = np.arange(m)
    M[idx, idx] += h / 3
    M[idx + 1, idx + 1] += h / 3
    M[idx, idx + 1] += h / 6
    M[idx + 1, idx] += h / 6
    return M


def _interpolate(A: Float[Array, "nodes n n"], s, kind: str) -> Float[Array, "n n"]:
    m = A.shape[0] - 1
    x = jnp.asarray(s, dtype=A.dtype) * m
    cell = jnp.clip(jnp.floor(x), 0, m - 1)
    i = cell.astype(jnp.int32)
    if kind == "constant":
        return A[i]
    w = x - cell
    return (1 - w) * A[i] + w * A[i + 1]


class LinearNeuralODE(AbstractLifting):
    r"""The linear neural ODE with weight function $A(s)$ sampled on a uniform grid.

    $A$ is given by its values `A[i]` $= A(s_i)$ at the nodes $s_i = i/m$ of $m$ cells and
    interpolated piecewise linearly (`"linear"`) or held constant on each cell
    $[s_i, s_{i+1})$ at its left node (`"constant"`; the last node then does not enter).
    The lifting is the state-transition matrix $z = \varphi(A) = \Phi(1, 0)$ of
    $\partial_s \Phi(s, 0) = A(s) \Phi(s, 0)$, $\Phi(0, 0) = I$, solved by diffrax
    (adaptive `Tsit5`, the grid nodes as jump times so no step straddles a kink).

    Training ([`node_flow.gradient_flow`][]) follows the $L^2$ gradient flow
    $\partial_t A = -\nabla_A L$, $\nabla_A L(s) = \Phi(1,s)^\top \nabla\ell(z)
    \Phi(s,0)^\top$ (THEORY §3), restricted to the grid functions: the Euclidean gradient
    of the node values is mapped through the inverse $L^2$ Gram (mass) matrix of the basis,
    so refining the grid does not change the speed of training. The Euclidean gradient is
    taken by reverse mode through the forward solve with
    `diffrax.RecursiveCheckpointAdjoint` (discretize-then-optimize): it is the exact
    gradient of the computed $z$, so the lifted flow matches $\dot z = -M\nabla\ell$ to
    solver tolerance, and it is robust where an adjoint ODE would add its own error.

    **Arguments:**

    - `A`: node values, shape `(m + 1, n, n)`, $m \ge 1$.
    - `interpolation`: `"linear"` (default) or `"constant"`.
    - `rtol`, `atol`: tolerances of the forward solve (default $10^{-10}$).
    - `max_steps`: of the forward solve (default `max(4096, 64 m)`).
    - `forward_autodiff`: solve with `diffrax.ForwardMode` (supports `jax.jvp`, not
      reverse mode); see `forward_mode()`.
    """

    A: Float[Array, "nodes n n"]
    interpolation: Literal["linear", "constant"] = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    forward_autodiff: bool = eqx.field(static=True, default=False)

    def __init__(
        self,
        A: Float[ArrayLike, "..."],
        interpolation: str = "linear",
        *,
        rtol: float = 1e-10,
        atol: float = 1e-10,
        max_steps: int | None = None,
        forward_autodiff: bool = False,
    ):
        A = jnp.asarray(A)
        if A.ndim != 3 or A.shape[1] != A.shape[2]:
            raise ValueError(
                "LinearNeuralODE: `A` must hold square node values of shape (m + 1, n, n); "
                f"got {A.shape}."
            )
        if A.shape[0] < 2:
            raise ValueError(
                f"LinearNeuralODE: the grid needs m ≥ 1 cells (m + 1 ≥ 2 nodes); got "
                f"{A.shape[0]} node(s)."
            )
        if not jnp.issubdtype(A.dtype, jnp.floating):
            raise TypeError(f"LinearNeuralODE: `A` must be floating; got {A.dtype}.")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"LinearNeuralODE: `interpolation` must be one of {_INTERPOLATIONS}; "
                f"got {interpolation!r}."
            )
        check_finite("LinearNeuralODE A", A)
        self.A = A
        self.interpolation = interpolation
        self.rtol, self.atol = float(rtol), float(atol)
        m = A.shape[0] - 1
        self.max_steps = int(max(4096, 64 * m) if max_steps is None else max_steps)
        self.forward_autodiff = bool(forward_autodiff)

    @property
    def m(self) -> int:
        """The number of grid cells."""
        return self.A.shape[0] - 1

    @property
    def n(self) -> int:
        return self.A.shape[1]

    @property
    def nodes(self) -> Float[Array, " nodes"]:
        return jnp.linspace(0.0, 1.0, self.m + 1, dtype=self.A.dtype)

    def at(self, s: Float[ArrayLike, "*batch"]) -> Float[Array, "*batch n n"]:
        r"""The weight function $A(s)$ at depth(s) `s` $\in [0, 1]$."""
        s = jnp.asarray(s, dtype=self.A.dtype)
        flat = jax.vmap(lambda x: _interpolate(self.A, x, self.interpolation))(s.reshape(-1))
        return flat.reshape(s.shape + (self.n, self.n))

    def transition(self, s0: float = 0.0, s1: float = 1.0) -> Float[Array, "n n"]:
        r"""$\Phi(s_1, s_0)$, solving $\partial_s \Phi = A(s)\Phi$, $\Phi(s_0) = I$."""
        kind = self.interpolation
        term = diffrax.ODETerm(lambda s, Phi, A: _interpolate(A, s, kind) @ Phi)
        controller = diffrax.ClipStepSizeController(
            diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            jump_ts=self.nodes[1:-1] if self.m > 1 else None,
        )
        dtype = self.A.dtype
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            jnp.asarray(s0, dtype),
            jnp.asarray(s1, dtype),
            None,
            jnp.eye(self.n, dtype=dtype),
            args=self.A,
            stepsize_controller=controller,
            adjoint=(
                diffrax.ForwardMode()
                if self.forward_autodiff
                else diffrax.RecursiveCheckpointAdjoint()
            ),
            max_steps=self.max_steps,
        )
        return sol.ys[-1]

    def lift(self) -> Float[Array, "n n"]:
        r"""$z = \Phi(1, 0)$."""
        return self.transition(0.0, 1.0)

    def forward_mode(self) -> "LinearNeuralODE":
        """A copy whose forward solve uses `diffrax.ForwardMode` (supports `jax.jvp`)."""
        return LinearNeuralODE(
            self.A,
            self.interpolation,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            forward_autodiff=True,
        )

    def precondition(self, grads: PyTree[Array]) -> PyTree[Array]:
        r"""Node-value gradient $\mapsto$ $L^2$ gradient: $g \mapsto \mathcal{M}^{-1} g$ with
        $\mathcal M_{ij} = \int \psi_i \psi_j$ (hat functions: tridiagonal
        $\frac{h}{6}[1, 4, 1]$, $\frac{h}{3}$ at the ends; constant: $h$ per cell, and the
        last node, which does not enter the lift, gets no update)."""
        g = grads.A
        if self.interpolation == "linear":
            Minv = jnp.asarray(np.linalg.inv(_mass_matrix(self.m)), g.dtype)
            g = jnp.einsum("ij,jab->iab", Minv, g)
        else:
            g = (self.m * g).at[-1].set(0.0)
        return eqx.tree_at(lambda t: t.A, grads, g)

    def refine(self) -> "LinearNeuralODE":
        """The same weight function on a grid of `2 m` cells (new nodes at the midpoints)."""
        A = self.A
        if self.interpolation == "linear":
            mid = 0.5 * (A[:-1] + A[1:])
        else:
            mid = A[:-1]
        fine = jnp.stack([A[:-1], mid], axis=1).reshape((2 * self.m,) + A.shape[1:])
        fine = jnp.concatenate([fine, A[-1:]])
        return LinearNeuralODE(
            fine,
            self.interpolation,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=max(self.max_steps, 64 * 2 * self.m),
        )

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

    def to_residual(self, L: int) -> ResidualLinearNetwork:
        r"""The depth-$L$ residual network $U_k = I + A(s_{k-1/2})/L$ sampling $A$ at the
        cell midpoints $s_{k-1/2} = (k - \frac12)/L$."""
        if not isinstance(L, int) or L < 1:
            raise ValueError(f"to_residual: L must be an integer ≥ 1; got {L!r}.")
        s = (jnp.arange(L, dtype=self.A.dtype) + 0.5) / L
        return ResidualLinearNetwork(self.at(s))
