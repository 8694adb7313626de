r"""Deep linear and residual linear networks, $z = U_L \cdots U_1$ (THEORY §2, §3)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..._conservation import conservation_laws
from ..._linear import LinearNetwork
from ..._residual import ResidualLinearNetwork


def _upper(C: Float[Array, "n n"]) -> Float[Array, " m"]:
    """The upper-triangular entries of a symmetric matrix, row by row."""
    rows, cols = jnp.triu_indices(C.shape[0])
    return C[rows, cols]


class DeepLinear(eqx.Module):
    r"""$\varphi(U_1, \dots, U_L) = U_L \cdots U_1$, $U_j \in \mathbb{R}^{n_j \times n_{j-1}}$.

    θ is a tuple of matrices, input layer first. Conserved:
    $C_j = U_{j+1}^\top U_{j+1} - U_j U_j^\top$, $j = 1, \dots, L-1$ (upper triangles). The
    product and the laws are those of [`node_flow.LinearNetwork`][] and
    [`node_flow.conservation_laws`][] (one home for each).
    """

    widths: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, theta: tuple[Float[Array, "_ _"], ...]) -> Float[Array, "_ _"]:
        return LinearNetwork(tuple(theta)).lift()

    def conserved(self, theta: tuple[Float[Array, "_ _"], ...]) -> Float[Array, " m"]:
        laws = conservation_laws(LinearNetwork(tuple(theta)))
        return jnp.concatenate([_upper(C) for C in laws])

    def sample(self, key: PRNGKeyArray) -> tuple[Float[Array, "_ _"], ...]:
        keys = jr.split(key, len(self.widths) - 1)
        return tuple(
            jr.normal(k, (n_out, n_in)) / jnp.sqrt(n_in)
            for k, n_in, n_out in zip(keys, self.widths[:-1], self.widths[1:])
        )


def deep_linear(widths: tuple[int, ...] | list[int]) -> DeepLinear:
    r"""The deep linear lifting for widths $(n_0, n_1, \dots, n_L)$, $L \ge 1$."""
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(
            f"deep_linear: widths must be (n_0, ..., n_L), L >= 1, all >= 1; got {widths}."
        )
    return DeepLinear(widths)


class Residual(eqx.Module):
    r"""$\varphi(A_1, \dots, A_L) = (I + A_L/L) \cdots (I + A_1/L)$ (THEORY §3).

    θ is one stacked array of shape `(depth, n, n)`. Conserved: $L^2 C_k$ with
    $U_k = I + A_k/L$, which converges to $\Lambda(s)$ of the neural ODE. The product and the
    laws are those of [`node_flow.ResidualLinearNetwork`][] and
    [`node_flow.conservation_laws`][].
    """

    depth: int = eqx.field(static=True)
    n: int = eqx.field(static=True)

    def factors(self, theta: Float[Array, "depth n n"]) -> Float[Array, "depth n n"]:
        return ResidualLinearNetwork(theta).factors()

    def __call__(self, theta: Float[Array, "depth n n"]) -> Float[Array, "n n"]:
        return ResidualLinearNetwork(theta).lift()

    def conserved(self, theta: Float[Array, "depth n n"]) -> Float[Array, " m"]:
        C = conservation_laws(ResidualLinearNetwork(theta))
        return self.depth**2 * jax.vmap(_upper)(C).ravel()

    def sample(self, key: PRNGKeyArray) -> Float[Array, "depth n n"]:
        return jr.normal(key, (self.depth, self.n, self.n))


def residual(depth: int, n: int) -> Residual:
    r"""The residual linear lifting of `depth` square blocks of size `n`."""
    if depth < 1 or n < 1:
        raise ValueError(f"residual: depth and n must be >= 1; got depth={depth}, n={n}.")
    return Residual(int(depth), int(n))
