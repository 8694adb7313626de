"""Losses of the lifted variable."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class LeastSquares(eqx.Module):
    r"""The least-squares loss $\ell(z) = \frac{1}{2N} \| z X - Y \|_F^2$.

    $X \in \mathbb{R}^{n_0 \times N}$ holds the $N$ inputs as columns and
    $Y \in \mathbb{R}^{n_L \times N}$ the targets. Its gradient is
    $\nabla \ell(z) = (zX - Y) X^\top / N$. Any callable `z ↦ scalar` can be used as a loss
    instead; this one is an `eqx.Module`, so new data does not trigger recompilation.
    """

    X: Float[Array, "inp N"]
    Y: Float[Array, "out N"]

    def __init__(self, X, Y):
        X, Y = jnp.asarray(X), jnp.asarray(Y)
        if X.ndim != 2 or Y.ndim != 2:
            raise ValueError(
                f"LeastSquares: X and Y must be matrices; got shapes {X.shape} and {Y.shape}."
            )
        if X.shape[1] != Y.shape[1]:
            raise ValueError(
                "LeastSquares: X and Y must have the same number of columns (examples); "
                f"got {X.shape[1]} and {Y.shape[1]}."
            )
        self.X, self.Y = X, Y

    def __call__(self, z: Float[Array, "..."]) -> Float[Array, ""]:
        if z.shape != (self.Y.shape[0], self.X.shape[0]):
            raise ValueError(
                f"LeastSquares: z must have shape {(self.Y.shape[0], self.X.shape[0])} "
                f"to multiply X {self.X.shape} and match Y {self.Y.shape}; got {z.shape}."
            )
        residual = z @ self.X - self.Y
        return jnp.sum(residual**2) / (2 * self.X.shape[1])
