"""Ordered products of many matrices in logarithmic depth."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


@jax.jit
def chain_product(mats: Float[Array, "depth *batch n n"]) -> Float[Array, "*batch n n"]:
    r"""The ordered product $M_{L} \cdots M_2 M_1$ of a stack `mats[0] = M_1, …` (extra
    batch axes after the first broadcast).

    Computed as a balanced binary tree of batched matrix products ($\lceil \log_2 L \rceil$
    levels, each one batched `matmul`) instead of a sequential scan over $L$ tiny products:
    the work is the same, the sequential depth is $\log_2 L$. The stack is padded with
    identities up to a power of two. Jitted, so that tracing it again for the same shape
    (every `eval_shape` or trace of a model's `lift`) is a cache hit rather than a rebuild
    of the $\log_2 L$ levels in Python.
    """
    depth, n = mats.shape[0], mats.shape[-1]
    size = 1 << max(depth - 1, 0).bit_length()
    if size > depth:
        eye = jnp.broadcast_to(jnp.eye(n, dtype=mats.dtype), (size - depth,) + mats.shape[1:])
        mats = jnp.concatenate([mats, eye])
    while mats.shape[0] > 1:
        mats = mats[1::2] @ mats[0::2]
    return mats[0]
