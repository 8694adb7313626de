"""The effective rank of a matrix (Roy & Vetterli 2007)."""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Inexact

from ._checks import check_finite


def effective_rank(z: ArrayLike) -> Float[Array, "*batch"]:
    r"""The effective rank $\operatorname{erank}(z) = \exp\big(-\sum_k p_k \log p_k\big)$,
    $p_k = \sigma_k / \sum_l \sigma_l$, of the singular values $\sigma_k$ of $z$
    (Roy & Vetterli, *The effective rank: a measure of effective dimensionality*,
    EUSIPCO 2007), with $0 \log 0 = 0$.

    It is a continuous proxy of the rank: $1 \le \operatorname{erank}(z) \le
    \operatorname{rank}(z)$, with equality on the right exactly when the nonzero singular
    values are equal, and it is invariant under scaling $z \mapsto cz$, $c \neq 0$. It is
    differentiable where the nonzero singular values are distinct.

    **Zero matrix:** the $p_k$ are undefined (0/0); we return $0$, the rank of the zero
    matrix (also for empty matrices), and never NaN.

    **Arguments:** `z`, an array of shape `(*batch, n_out, n_in)`, real or complex; the
    last two axes are the matrix, leading axes are batch axes (e.g. the time axis of
    `FlowSolution.zs`). A concrete `z` must be finite.

    **Returns:** the effective ranks, real, of shape `batch`.
    """
    z = jnp.asarray(z)
    if z.ndim < 2:
        raise ValueError(
            f"effective_rank: z must have at least two axes (a matrix, with optional "
            f"leading batch axes); got shape {z.shape}. Reshape a vector to (1, n)."
        )
    if not jnp.issubdtype(z.dtype, jnp.inexact):
        z = z.astype(float)
    check_finite("effective_rank: z", z)
    return _effective_rank(z)


@jax.jit
def _effective_rank(z: Inexact[Array, "*batch n_out n_in"]) -> Float[Array, "*batch"]:
    sigma = jnp.linalg.svd(z, compute_uv=False)
    total = jnp.sum(sigma, axis=-1, keepdims=True)
    nonzero = total > 0
    p = sigma / jnp.where(nonzero, total, 1)
    positive = p > 0
    entropy = -jnp.sum(jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1)), 0), axis=-1)
    return jnp.where(nonzero[..., 0], jnp.exp(entropy), 0)
