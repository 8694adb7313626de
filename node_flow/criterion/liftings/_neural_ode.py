r"""The linear neural ODE on a grid of cells, $z = \Phi(1, 0)$ (THEORY §3)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


class NeuralODEGrid(eqx.Module):
    r"""$\varphi(A) = P(A_m/m) \cdots P(A_1/m)$ with $P(B) = \sum_{i \le p} B^i / i!$: one
    step of order $p$ of $\partial_s\Phi = A(s)\Phi$ per cell, for a weight function $A$
    constant on each of the `cells` cells of $[0, 1]$.

    θ is the stacked array of cell values, shape `(cells, n, n)`. Order 1 (explicit Euler) is
    the residual network $U_k = I + A_k/m$ of THEORY §3, with conservation laws
    $m^2 C_k \to \Lambda(s)$; order 4 is the classical RK4 step, $P(B) = e^{B} + O(\|B\|^5)$,
    a nonlinear reparametrization of each factor, for which no law is known in closed form.
    """

    cells: int = eqx.field(static=True)
    n: int = eqx.field(static=True)
    order: int = eqx.field(static=True)

    def __call__(self, theta: Float[Array, "cells n n"]) -> Float[Array, "n n"]:
        eye = jnp.eye(self.n, dtype=theta.dtype)

        def step(z, A):
            B = A / self.cells
            P, term = eye, eye
            for i in range(1, self.order + 1):  # Taylor terms: a fixed, small order
                term = term @ B / i
                P = P + term
            return P @ z, None

        z, _ = jax.lax.scan(step, eye, theta)
        return z

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
