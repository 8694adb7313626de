"""Generic (unbalanced) Gaussian initialization."""

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .._checks import as_float_dtype, as_scale, as_widths, ScaleLike, WidthsLike
from .._linear import LinearNetwork


def gaussian(
    key: PRNGKeyArray, widths: WidthsLike, std: ScaleLike | None = None, *, dtype=None
) -> LinearNetwork:
    r"""A deep linear network with i.i.d. Gaussian factors $U_j \sim \mathcal N(0, \sigma_j^2)$.

    **Arguments:** `key`; `widths` $(n_0, \dots, n_L)$, integers $\ge 1$ (floats are refused,
    not truncated); `std` $\sigma$, positive and finite (default $1/\sqrt{n_{j-1}}$ for
    layer $j$); `dtype`, a real floating dtype (default: JAX's default float).

    Generic: its conservation laws $C_j$ are not multiples of the identity.
    """
    fname = "init.gaussian"
    widths = as_widths(fname, widths)
    dtype = as_float_dtype(fname, dtype)
    if std is not None:
        std = as_scale(fname, "std", std)
    keys = jax.random.split(key, len(widths) - 1)
    weights = []
    for k, n_in, n_out in zip(keys, widths[:-1], widths[1:]):
        sigma = 1.0 / n_in**0.5 if std is None else std
        weights.append(jnp.asarray(sigma, dtype) * jax.random.normal(k, (n_out, n_in), dtype))
    return LinearNetwork(tuple(weights))
