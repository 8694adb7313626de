"""Balanced and relaxed balanced initializations (THEORY §2)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from .._checks import as_float_dtype, as_scale, as_widths, is_concrete, ScaleLike, WidthsLike
from .._linear import LinearNetwork
from ._common import orthonormal, orthonormal_frames, psd_sqrt, spectrum


def balanced(
    key: PRNGKeyArray, widths: WidthsLike, scale: ScaleLike = 1.0, *, dtype=None
) -> LinearNetwork:
    r"""An exactly balanced deep linear network: $C_j = U_{j+1}^\top U_{j+1} - U_j U_j^\top = 0$.

    $U_j = V_{j+1} \Sigma V_j^\top$ with $V_j \in \mathbb{R}^{n_j \times r}$ Haar-random with
    orthonormal columns, $r = \min_j n_j$, and one $\Sigma$ (distinct entries in
    `scale · [0.5, 1.5]`) shared by all layers, so $U_{j+1}^\top U_{j+1} = V_{j+1}\Sigma^2
    V_{j+1}^\top = U_j U_j^\top$ to rounding. Any widths, any depth.

    **Arguments:** `key`; `widths` $(n_0, \dots, n_L)$, integers $\ge 1$ (floats are
    refused, not truncated); `scale`, positive and finite (a zero scale would give the zero
    network, a critical point of every loss, so it is refused as in
    [`node_flow.init.relaxed_balanced`][]); `dtype`, a real floating dtype.
    """
    fname = "init.balanced"
    widths = as_widths(fname, widths)
    dtype = as_float_dtype(fname, dtype)
    scale = as_scale(fname, "scale", scale)
    r = min(widths)
    k_sigma, *k_frames = jax.random.split(key, len(widths) + 1)
    sigma = spectrum(k_sigma, r, scale, dtype)
    V = orthonormal_frames(k_frames, widths, r, dtype)
    return LinearNetwork(tuple((V[j + 1] * sigma) @ V[j].T for j in range(len(widths) - 1)))


def _check_lambdas(lambdas, depth) -> np.ndarray:
    fname = "init.relaxed_balanced"
    if any(not is_concrete(x) for x in jax.tree.leaves(lambdas)):
        raise ValueError(
            f"{fname}: `lambdas` must be concrete (the feasibility of the spectrum is decided "
            "on the host); got a traced value. Build the network outside `jit`/`vmap`."
        )
    try:
        lam = np.asarray(lambdas)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fname}: `lambdas` must be an array of real numbers: {err}") from None
    if lam.dtype == bool or not np.issubdtype(lam.dtype, np.number):
        raise TypeError(f"{fname}: `lambdas` must hold real numbers; got dtype {lam.dtype}.")
    if np.issubdtype(lam.dtype, np.complexfloating):
        raise TypeError(f"{fname}: `lambdas` must be real; got complex values {lam}.")
    if lam.ndim > 1:
        raise ValueError(f"{fname}: `lambdas` must be 1-D; got shape {lam.shape}.")
    lam = lam.astype(float).reshape(-1)
    if lam.shape != (depth - 1,):
        raise ValueError(
            f"{fname}: need one λ_j per conservation law (depth - 1 = "
            f"{depth - 1}); got {lam.shape[0]}."
        )
    if not np.all(np.isfinite(lam)):
        raise ValueError(f"{fname}: the λ_j must be finite; got {lam}.")
    return lam


def relaxed_balanced(
    key: PRNGKeyArray,
    widths: WidthsLike,
    lambdas: ArrayLike | Sequence,
    scale: ScaleLike = 1.0,
    *,
    dtype=None,
) -> LinearNetwork:
    r"""An exactly relaxed balanced deep linear network: $C_j = \lambda_j I$, $j = 1..L-1$.

    **Square widths, any depth** (THEORY §2): $U_j = X_{j+1} \Sigma_j X_j^\top$ with
    Haar-random orthogonal $X_j$ and $\sigma_{j,k}^2 = a_k + c_j$, $c_j = \lambda_1 + \dots
    + \lambda_{j-1}$, so $C_j = X_{j+1} (\Sigma_{j+1}^2 - \Sigma_j^2) X_{j+1}^\top =
    \lambda_j I$ to rounding. Feasible for every λ: $a_k = (\text{scale}\cdot u_k)^2 +
    \max(0, -\min_j c_j)$ with $u_k \in [0.5, 1.5]$ keeps every $a_k + c_j > 0$.

    **Two layers, rectangular** $(n_0, n_1, n_2)$,
    $C = U_2^\top U_2 - U_1 U_1^\top = \lambda I_{n_1}$:
    for $\lambda > 0$, $U_2^\top U_2 = \lambda I + U_1 U_1^\top$ has full rank $n_1$, which
    needs $n_2 \ge n_1$; for $\lambda < 0$, symmetrically $n_0 \ge n_1$. Built as
    $U_2 = O (\lambda I + U_1 U_1^\top)^{1/2}$ (resp. $U_1 = (|\lambda| I + U_2^\top
    U_2)^{1/2} O^\top$) with $O$ orthonormal columns. Otherwise a `ValueError` names the
    violated condition. Rectangular widths with depth > 2 and some $\lambda_j \neq 0$ are
    not supported (`ValueError`); all $\lambda_j = 0$ falls back to [`node_flow.init.balanced`][].
    """
    fname = "init.relaxed_balanced"
    widths = as_widths(fname, widths)
    dtype = as_float_dtype(fname, dtype)
    depth = len(widths) - 1
    lam = _check_lambdas(lambdas, depth)
    scale = as_scale(fname, "scale", scale)
    if len(set(widths)) == 1:
        n = widths[0]
        c = np.concatenate([[0.0], np.cumsum(lam)])
        k_sigma, *k_frames = jax.random.split(key, depth + 2)
        a = spectrum(k_sigma, n, scale, dtype) ** 2 + float(max(0.0, -c.min()))
        sigma = jnp.sqrt(a[None, :] + jnp.asarray(c, dtype)[:, None])
        X = orthonormal_frames(k_frames, [n] * len(k_frames), n, dtype)
        return LinearNetwork(tuple((X[j + 1] * sigma[j]) @ X[j].T for j in range(depth)))
    if np.all(lam == 0):
        return balanced(key, widths, scale, dtype=dtype)
    if depth != 2:
        raise ValueError(
            f"{fname}: unsupported configuration: rectangular widths {widths} with depth "
            f"{depth} > 2 and nonzero λ. Relaxed balanced factors are built for square "
            "widths (any depth) and for two layers."
        )
    n0, n1, n2 = widths
    lmb = float(lam[0])
    scale = jnp.asarray(scale, dtype)
    k_free, k_frame = jax.random.split(key)
    if lmb > 0:
        if n2 < n1:
            raise ValueError(
                f"{fname}: infeasible λ = {lmb} > 0 for widths {widths}: "
                "U_2ᵀU_2 = λI + U_1U_1ᵀ must have full rank n_1, which needs the output "
                f"width n_2 = {n2} ≥ the hidden width n_1 = {n1}."
            )
        U1 = scale * jax.random.normal(k_free, (n1, n0), dtype) / n0**0.5
        eye = jnp.eye(n1, dtype=dtype)
        U2 = orthonormal(k_frame, n2, n1, dtype) @ psd_sqrt(lmb * eye + U1 @ U1.T)
    else:
        if n0 < n1:
            raise ValueError(
                f"{fname}: infeasible λ = {lmb} < 0 for widths {widths}: "
                "U_1U_1ᵀ = |λ|I + U_2ᵀU_2 must have full rank n_1, which needs the input "
                f"width n_0 = {n0} ≥ the hidden width n_1 = {n1}."
            )
        U2 = scale * jax.random.normal(k_free, (n2, n1), dtype) / n1**0.5
        eye = jnp.eye(n1, dtype=dtype)
        U1 = psd_sqrt(-lmb * eye + U2.T @ U2) @ orthonormal(k_frame, n0, n1, dtype).T
    return LinearNetwork((U1, U2))
