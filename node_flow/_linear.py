r"""Deep linear networks: the lifting $z = U_L \cdots U_1$ and its conservation laws."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._chain import chain_product, chain_product_reverse
from ._checks import as_real_array
from ._lifting import AbstractLifting


class LinearNetwork(AbstractLifting):
    r"""A deep linear network $\theta = (U_1, \dots, U_L)$,
    $U_j \in \mathbb{R}^{n_j \times n_{j-1}}$, with lifting the product
    $z = \varphi(\theta) = U_L \cdots U_1$.

    **Arguments:**

    - `weights`: a sequence of 2-D arrays, `weights[j-1] = U_j` (input layer first). The
      width chain must match: `weights[j].shape[1] == weights[j-1].shape[0]`.
    - `reverse_only` (internal, set by `reverse_mode()`): compute `lift` with the fused
      reverse pass of `chain_product_reverse`.

    **Attributes:** `depth` ($L$) and `widths` ($(n_0, n_1, \dots, n_L)$).
    """

    weights: tuple[Float[Array, "_ _"], ...]
    reverse_only: bool = eqx.field(static=True)

    def __init__(self, weights, *, reverse_only: bool = False):
        if isinstance(weights, (jax.Array, np.ndarray)) and jnp.ndim(weights) == 3:
            weights = tuple(weights)
        if not isinstance(weights, (tuple, list)) or len(weights) == 0:
            hint = " (a single matrix U is the network (U,))" if np.ndim(weights) == 2 else ""
            raise TypeError(
                "LinearNetwork: `weights` must be a non-empty tuple of 2-D arrays "
                f"U_1, ..., U_L; got {type(weights).__name__}{hint}."
            )
        self.weights = tuple(
            as_real_array("LinearNetwork", f"weights[{j - 1}] (U_{j})", U, ndim=2)
            for j, U in enumerate(weights, start=1)
        )
        self.reverse_only = reverse_only

    def __check_init__(self):
        dtypes = {U.dtype for U in self.weights}
        if len(dtypes) > 1:
            raise TypeError(
                f"LinearNetwork: the factors mix dtypes {sorted(map(str, dtypes))}; cast them "
                "to one floating dtype."
            )
        for j in range(1, len(self.weights)):
            out_prev, in_next = self.weights[j - 1].shape[0], self.weights[j].shape[1]
            if out_prev != in_next:
                raise ValueError(
                    f"LinearNetwork: mismatched widths: U_{j} has {out_prev} rows but "
                    f"U_{j + 1} has {in_next} columns (U_{j + 1} U_{j} is undefined)."
                )

    @property
    def depth(self) -> int:
        return len(self.weights)

    def reverse_mode(self) -> "LinearNetwork":
        """A copy whose `lift` has the fused reverse pass when the widths are equal
        (`jax.grad` only, no `jax.jvp`)."""
        return LinearNetwork(self.weights, reverse_only=True) if self.is_square else self

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.weights[0].shape[-1],) + tuple(U.shape[-2] for U in self.weights)

    @property
    def is_square(self) -> bool:
        """Whether all widths are equal (then the factors can be stacked)."""
        return len(set(self.widths)) == 1

    def lift(self) -> Float[Array, "*batch out inp"]:
        r"""$z = U_L \cdots U_1$ (a log-depth batched product when widths are equal).

        Leading batch axes (e.g. the time axis of `FlowSolution.models`) broadcast."""
        if self.is_square:
            product = chain_product_reverse if self.reverse_only else chain_product
            return product(jnp.stack(self.weights))
        return ft.reduce(lambda z, U: U @ z, self.weights[1:], self.weights[0])
