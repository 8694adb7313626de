"""Shared pieces of the initializations: random spectra and orthogonal frames."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def orthonormal(key: PRNGKeyArray, rows: int, cols: int, dtype) -> Float[Array, "rows cols"]:
    """A Haar-random `rows × cols` matrix with orthonormal columns (`cols ≤ rows`)."""
    return orthonormal_frames([key], [rows], cols, dtype)[0]


def orthonormal_frames(
    keys: Sequence[PRNGKeyArray], rows: Sequence[int], cols: int, dtype
) -> list[Float[Array, "_ cols"]]:
    """Independent Haar-random frames, `rows[j] × cols` with orthonormal columns, from
    **one** batched QR factorization: each Gaussian draw is padded with zero rows to
    the largest height (the QR factors of $[G; 0]$ are $[Q; 0]$ and $R$, so the frames
    are those of separate factorizations, to rounding). Separate factorizations in one
    program are independent LAPACK kernels, which XLA runs concurrently on the CPU;
    with more of them than CPU threads, jaxlib 0.10 deadlocked (e.g. `jax.vmap` of a
    depth-2 `balanced` network of width 100 over 16 keys, on 2 cores)."""
    height = max(rows)
    draws = [jax.random.normal(k, (n, cols), dtype) for k, n in zip(keys, rows)]
    stacked = jnp.stack([jnp.pad(g, ((0, height - g.shape[0]), (0, 0))) for g in draws])
    Q, R = jnp.linalg.qr(stacked)
    Q = Q * jnp.sign(jnp.diagonal(R, axis1=-2, axis2=-1))[..., None, :]
    return [Q[j, :n] for j, n in enumerate(rows)]


def spectrum(key: PRNGKeyArray, r: int, scale: float, dtype) -> Float[Array, " r"]:
    """`r` distinct singular values, uniform in `scale · [0.5, 1.5]`."""
    return jnp.asarray(scale, dtype) * (0.5 + jax.random.uniform(key, (r,), dtype))


def psd_sqrt(P: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """The square root of a symmetric PSD matrix by `eigh` (tiny negative eigenvalues clipped)."""
    w, V = jnp.linalg.eigh(P)
    return (V * jnp.sqrt(jnp.clip(w, 0.0))) @ V.T
