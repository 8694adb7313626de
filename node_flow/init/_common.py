"""Shared pieces of the initializations: width validation and random orthogonal frames."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def check_widths(fname: str, widths: Sequence[int]) -> tuple[int, ...]:
    try:
        widths = tuple(int(n) for n in widths)
    except TypeError:
        raise TypeError(f"{fname}: `widths` must be a sequence of ints (n_0, ..., n_L).")
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(
            f"{fname}: `widths` must hold at least two positive ints (n_0, ..., n_L); got {widths}."
        )
    return widths


def orthonormal(key: PRNGKeyArray, rows: int, cols: int, dtype) -> Float[Array, "rows cols"]:
    """A Haar-random `rows × cols` matrix with orthonormal columns (`cols ≤ rows`)."""
    Q, R = jnp.linalg.qr(jax.random.normal(key, (rows, cols), dtype))
    return Q * jnp.sign(jnp.diagonal(R))


def spectrum(key: PRNGKeyArray, r: int, scale: float, dtype) -> Float[Array, " r"]:
    """`r` distinct singular values, uniform in `scale · [0.5, 1.5]`."""
    return scale * (0.5 + jax.random.uniform(key, (r,), dtype))


def psd_sqrt(P: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """The square root of a symmetric PSD matrix by `eigh` (tiny negative eigenvalues clipped)."""
    w, V = jnp.linalg.eigh(P)
    return (V * jnp.sqrt(jnp.clip(w, 0.0))) @ V.T
