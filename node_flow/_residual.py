"""Residual linear networks $U_k = I + A_k / L$: the finite-depth neural ODE."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._chain import chain_product, chain_product_reverse
from ._checks import as_real_array
from ._lifting import AbstractLifting
from ._linear import LinearNetwork


class ResidualLinearNetwork(AbstractLifting):
    r"""A depth-$L$ residual linear network $z = U_L \cdots U_1$, $U_k = I + A_k / L$.

    Its training metric is $(1/L) \sum_k \|A_k\|_F^2$, so [`node_flow.gradient_flow`][]
    integrates $\dot A_k = -L\, \partial L / \partial A_k$, i.e.
    $\dot U_k = -\frac1L \nabla_{U_k} L$: the time scale of the linear neural ODE, of
    which this is the depth-$L$ discretization (THEORY §3; Sander et al. 2022).

    **Arguments:** `A`, the stack of residual weights, shape `(L, n, n)`; `reverse_only`
    (internal, set by `reverse_mode()`): compute `lift` with the fused reverse pass.
    """

    A: Float[Array, "depth n n"]
    reverse_only: bool = eqx.field(static=True)

    def __init__(self, A, *, reverse_only: bool = False):
        A = as_real_array("ResidualLinearNetwork", "A", A, ndim=3)
        if A.shape[1] != A.shape[2]:
            raise ValueError(
                "ResidualLinearNetwork: `A` must be a stack of square matrices of shape "
                f"(L, n, n) with L ≥ 1; got shape {A.shape}."
            )
        self.A = A
        self.reverse_only = reverse_only

    @property
    def depth(self) -> int:
        return self.A.shape[-3]

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.A.shape[-1],) * (self.depth + 1)

    def factors(self) -> Float[Array, "*batch depth n n"]:
        r"""The stacked factors $U_k = I + A_k / L$."""
        return _factors(self.A)

    def lift(self) -> Float[Array, "*batch n n"]:
        r"""$z = U_L \cdots U_1$ (log-depth batched product; leading batch axes broadcast)."""
        product = chain_product_reverse if self.reverse_only else chain_product
        return product(jnp.moveaxis(self.factors(), -3, 0))

    def reverse_mode(self) -> "ResidualLinearNetwork":
        """A copy whose `lift` has the fused reverse pass (`jax.grad` only, no `jax.jvp`)."""
        return ResidualLinearNetwork(self.A, reverse_only=True)

    def precondition(self, grads: PyTree[Array]) -> PyTree[Array]:
        r"""$\partial L/\partial A_k \mapsto L\, \partial L/\partial A_k$
        (the metric $\frac1L\sum_k\|A_k\|^2$)."""
        return jax.tree.map(lambda g: self.depth * g, grads)

    def to_linear(self) -> LinearNetwork:
        """The same network as a [`node_flow.LinearNetwork`][] of its factors $U_k$
        (Euclidean metric on the $U_k$: train it with `time_scale = 1 / L` for the same flow)."""
        return LinearNetwork(tuple(jnp.moveaxis(self.factors(), -3, 0)))


@jax.jit
def _factors(A: Float[Array, "*batch depth n n"]) -> Float[Array, "*batch depth n n"]:
    # Jitted: re-tracing `lift` (each `eval_shape`, each solver stage) hits the cache.
    return jnp.eye(A.shape[-1], dtype=A.dtype) + A / A.shape[-3]
