r"""The linear neural ODE on a grid of cells, $z = \Phi(1, 0)$ (THEORY §3)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


class NeuralODEGrid(eqx.Module):
    r"""$\varphi(A) = P(A_m/m) \cdots P(A_1/m)$, $P(B) = I + B + B^2/2 + B^3/6 + B^4/24$:
    one classical RK4 step of $\partial_s\Phi = A(s)\Phi$ per cell, for a weight function $A$
    constant on each of the `cells` cells of $[0, 1]$.

    θ is the stacked array of cell values, shape `(cells, n, n)`. $P(B)$ agrees with
    $e^{B}$ to $O(\|B\|^5)$; no conservation law is known in closed form for the grid (the
    continuum law $\Lambda(s)$ holds only as $m \to \infty$).
    """

    cells: int = eqx.field(static=True)
    n: int = eqx.field(static=True)

    def __call__(self, theta: Float[Array, "cells n n"]) -> Float[Array, "n n"]:
        eye = jnp.eye(self.n, dtype=theta.dtype)

        def step(z, A):
            B = A / self.cells
            B2 = B @ B
            P = eye + B + B2 / 2 + B2 @ B / 6 + B2 @ B2 / 24
            return P @ z, None

        z, _ = jax.lax.scan(step, eye, theta)
        return z

    def sample(self, key: PRNGKeyArray) -> Float[Array, "cells n n"]:
        return jr.normal(key, (self.cells, self.n, self.n))


def neural_ode_grid(cells: int, n: int) -> NeuralODEGrid:
    r"""The neural-ODE lifting on `cells` grid cells with $n \times n$ weights."""
    if cells < 1 or n < 1:
        raise ValueError(f"neural_ode_grid: cells and n must be >= 1; got {cells}, {n}.")
    return NeuralODEGrid(int(cells), int(n))
