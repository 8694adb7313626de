"""Shared pieces of the initializations: random spectra and orthogonal frames."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def orthonormal(key: PRNGKeyArray, rows: int, cols: int, dtype) -> Float[Array, "rows cols"]:
    """A Haar-random `rows × cols` matrix with orthonormal columns (`cols ≤ rows`)."""
    Q, R = jnp.linalg.qr(jax.random.normal(key, (rows, cols), dtype))
    return Q * jnp.sign(jnp.diagonal(R))


def spectrum(key: PRNGKeyArray, r: int, scale: float, dtype) -> Float[Array, " r"]:
    """`r` distinct singular values, uniform in `scale · [0.5, 1.5]`."""
    return jnp.asarray(scale, dtype) * (0.5 + jax.random.uniform(key, (r,), dtype))


def psd_sqrt(P: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """The square root of a symmetric PSD matrix by `eigh` (tiny negative eigenvalues clipped)."""
    w, V = jnp.linalg.eigh(P)
    return (V * jnp.sqrt(jnp.clip(w, 0.0))) @ V.T
