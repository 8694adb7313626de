r"""The linear neural ODE on a grid of cells, $z = \Phi(1, 0)$ (THEORY §3)."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..._basis import PiecewiseConstant
from ..._chain import chain_product
from ..._neural_ode import LinearNeuralODE
from ._linear import Residual


class NeuralODEGrid(eqx.Module):
    r"""$\varphi(A) = P(A_m/m) \cdots P(A_1/m)$ with $P(B) = \sum_{i \le p} B^i / i!$: one
    step of order $p$ of $\partial_s\Phi = A(s)\Phi$ per cell, for a weight function $A$
    constant on each of the `cells` cells of $[0, 1]$.

    θ is the stacked array of cell values, shape `(cells, n, n)`: the weight function of
    the library's [`node_flow.LinearNeuralODE`][] with the
    [`node_flow.neural_ode.PiecewiseConstant`][] basis (`model(θ)`). Order 1 (explicit
    Euler) is its residual network $U_k = I + A_k/m$
    ([`node_flow.LinearNeuralODE.to_residual`][], THEORY §3), with conservation laws
    $m^2 C_k \to \Lambda(s)$ (`conserved`, those of the `residual` lifting); order 4 is the
    classical RK4 step, $P(B) = e^{B} + O(\|B\|^5)$, a nonlinear reparametrization of each
    factor, for which no law is known in closed form.
    """

    cells: int = eqx.field(static=True)
    n: int = eqx.field(static=True)
    order: int = eqx.field(static=True)

    def model(self, theta: Float[Array, "cells n n"]) -> LinearNeuralODE:
        """The linear neural ODE whose weight function is `theta[k]` on cell k (the last
        node repeats the last cell's value; with this basis it does not enter)."""
        return LinearNeuralODE(jnp.concatenate([theta, theta[-1:]]), PiecewiseConstant())

    def __call__(self, theta: Float[Array, "cells n n"]) -> Float[Array, "n n"]:
        residual = self.model(theta).to_residual(self.cells)
        if self.order == 1:
            return residual.lift()
        B = residual.A / self.cells  # the cell values A(s_{k-1/2}) = θ_k, times the step 1/m
        term = P = jnp.broadcast_to(jnp.eye(self.n, dtype=B.dtype), B.shape)
        for i in range(1, self.order + 1):  # Taylor terms: a fixed, small order
            term = term @ B / i
            P = P + term
        return chain_product(P)

    def conserved(self, theta: Float[Array, "cells n n"]) -> Float[Array, " m"]:
        """Order 1: the residual network's laws $m^2 C_k$ (upper triangles). Other orders
        have no known closed-form law: a `ValueError` (let the criterion count them)."""
        if self.order != 1:
            raise ValueError(
                f"NeuralODEGrid.conserved: no conservation law is known in closed form for "
                f"order {self.order}; call the criterion without `conserved=` to count them."
            )
        return Residual(self.cells, self.n).conserved(theta)

    def sample(self, key: PRNGKeyArray) -> Float[Array, "cells n n"]:
        return jr.normal(key, (self.cells, self.n, self.n))


def neural_ode_grid(cells: int, n: int, *, order: int = 1) -> NeuralODEGrid:
    r"""The neural-ODE lifting on `cells` grid cells with $n \times n$ weights, one step of
    order `order` (1: explicit Euler, the residual network; 4: RK4) per cell."""
    if cells < 1 or n < 1 or order < 1:
        raise ValueError(
            f"neural_ode_grid: cells, n and order must be >= 1; got {cells}, {n}, {order}."
        )
    return NeuralODEGrid(int(cells), int(n), int(order))
