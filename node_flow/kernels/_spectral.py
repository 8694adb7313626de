"""Kernels that act diagonally in the singular basis of a square $z$."""

import jax.numpy as jnp
from jaxtyping import Array, Float


def check_square_pair(fname: str, z, G) -> tuple[Array, Array]:
    z, G = jnp.asarray(z), jnp.asarray(G)
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise ValueError(
            f"{fname}: z must be a square matrix (the kernel of THEORY §2–3 is for square "
            f"widths); got shape {z.shape}."
        )
    if G.shape != z.shape:
        raise ValueError(f"{fname}: G must have the shape of z {z.shape}; got {G.shape}.")
    return z, G.astype(z.dtype)


def apply_in_singular_basis(
    X: Float[Array, "n n"],
    W: Float[Array, "n n"],
    Y: Float[Array, "n n"],
    G: Float[Array, "n n"],
) -> Float[Array, "n n"]:
    r"""$X\,(W \circ (X^\top G Y))\,Y^\top$ for $z = X \operatorname{diag}(s) Y^\top$."""
    return X @ (W * (X.T @ G @ Y)) @ Y.T
