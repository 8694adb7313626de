r"""Kernels that act diagonally in the singular basis of a square $z$, and their derivatives.

Every kernel of this package has the form

$$K(z)[G] = X \big(W \circ (X^\top G Y)\big) Y^\top,\qquad z = X \operatorname{diag}(s) Y^\top,
\qquad W_{kl} = p[a_k, a_l],$$

where $p$ is an increasing function, $a_k = p^{-1}(s_k^2)$ and $p[x, y] = (p(x) - p(y))/(x - y)$
its first divided difference: $p(a) = \prod_j (a + c_j)$ for deep linear networks (THEORY §2),
$p = \exp$ for the neural ODE (THEORY §3). Equivalently $W_{kl} = 1/g[t_k, t_l]$ with
$g = p^{-1}$, $t = s^2$: $K$ is a *bimatrix function* of $(zz^\top, z^\top z)$.

**Derivatives.** Autodiff through an SVD divides by $s_m^2 - s_k^2$ and is NaN at repeated
singular values (`2 I`, the balanced starts) and inaccurate near them. The derivative of a
spectral function is instead given by divided differences of its spectral weights
(Daleckii & Krein 1965; Bhatia, *Matrix Analysis*, §V.3): with $H = X^\top G Y$,
$P = X^\top \dot z\, Y$, $\alpha = X^\top (\dot z z^\top + z \dot z^\top) X = P\,\mathrm{diag}(s)
+ (P\,\mathrm{diag}(s))^\top$, $\beta = Y^\top(\dot z^\top z + z^\top \dot z) Y$,

$$X^\top \dot K\, Y = W \circ (X^\top \dot G\, Y)
 + \sum_m \alpha_{km} H_{ml}\, \frac{W_{ml} - W_{kl}}{t_m - t_k}
 + \sum_m H_{km} \beta_{ml}\, \frac{W_{kl} - W_{km}}{t_l - t_m},$$

the $m = k$ (resp. $m = l$) terms being the derivative of $W$ along $\dot t = \operatorname{diag}
(\alpha)$. By the divided-difference rule for inverse functions,
$g[t_k, t_m, t_l] = -p[a_k, a_m, a_l] / (W_{km} W_{kl} W_{ml})$, so

$$\frac{W_{ml} - W_{kl}}{t_m - t_k} = \frac{S_{kml}}{W_{km}},\qquad
  S_{kml} = p[a_k, a_m, a_l],$$

a second divided difference of $p$, computed without cancellation by each kernel (positive
sums for polynomials, a series for close arguments of $\exp$). Nothing divides by a gap of
singular values, so the tangent is exact and continuous at repeated and nearly repeated
singular values. It costs $O(n^3)$.
"""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import guard, is_concrete


def _check_finite_input(fname: str, argname: str, x: Array, fix: str, traced: bool = True) -> Array:
    """`ValueError` for a concrete non-finite `x`; when traced, `guard` with the same
    message if `traced` (for parameters such as λ, never for the state z: inside an adaptive
    ODE solve, trial stages of rejected steps and the idle lanes of a vmapped solve may be
    non-finite, and the solver, not the kernel, decides; a NaN z then gives a NaN kernel,
    which the flows report)."""
    message = f"{fname}: `{argname}` holds NaN or inf; {fix}"
    if is_concrete(x):
        if not np.all(np.isfinite(np.asarray(x))):  # numpy: no tracer inside an outer trace
            raise ValueError(f"{message} Got {argname} = {x}.")
        return x
    if not traced:
        return x
    return guard(x, ~jnp.all(jnp.isfinite(x)), message)


def check_square_pair(fname: str, z, G) -> tuple[Array, Array]:
    """`z` square, finite and floating, `G` of the same shape (cast to the dtype of `z`)."""
    z, G = jnp.asarray(z), jnp.asarray(G)
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise ValueError(
            f"{fname}: z must be a square matrix (the kernel of THEORY §2–3 is for square "
            f"widths); got shape {z.shape}."
        )
    if G.shape != z.shape:
        raise ValueError(f"{fname}: G must have the shape of z {z.shape}; got {G.shape}.")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        z = z.astype(jnp.result_type(float))
    z = _check_finite_input(
        fname,
        "z",
        z,
        "the kernel of a non-finite matrix is undefined (check what produced z).",
        traced=False,
    )
    return z, G.astype(z.dtype)


def apply_in_singular_basis(
    X: Float[Array, "n n"],
    W: Float[Array, "n n"],
    Y: Float[Array, "n n"],
    G: Float[Array, "n n"],
) -> Float[Array, "n n"]:
    r"""$X\,(W \circ (X^\top G Y))\,Y^\top$ for $z = X \operatorname{diag}(s) Y^\top$."""
    return X @ (W * (X.T @ G @ Y)) @ Y.T


def spectral_tangent(
    X: Float[Array, "n n"],
    s: Float[Array, " n"],
    Y: Float[Array, "n n"],
    W: Float[Array, "n n"],
    S: Float[Array, "n n n"] | Callable,
    G: Float[Array, "n n"],
    z_dot: Float[Array, "n n"],
    G_dot: Float[Array, "n n"],
    W_dot: Float[Array, "n n"] | None = None,
) -> tuple[Float[Array, "n n"], Float[Array, "n n"]]:
    r"""The kernel $K(z)[G]$ and its tangent $\dot K$ along $(\dot z, \dot G)$ (module
    docstring), from the SVD $z = X\operatorname{diag}(s)Y^\top$, the weights $W$, the second
    divided differences $S_{kml} = p[a_k, a_m, a_l]$ and, optionally, the change `W_dot` of the
    weights at fixed $s$ (e.g. along the imbalances $\lambda$). `S` is the $n^3$ tensor, or
    the contraction $(A, B) \mapsto \sum_m A_{km} B_{ml} S_{kml}$ itself where $p$ allows a
    cheaper one (matrix products for $p(a) = a^L$: `power_contraction`)."""
    contract = S if callable(S) else lambda A, B: jnp.einsum("km,ml,kml->kl", A, B, S)
    H = X.T @ G @ Y
    P = X.T @ z_dot @ Y
    Ps, sP = P * s[None, :], s[:, None] * P
    alpha, beta = Ps + Ps.T, sP + sP.T
    inner = W * (X.T @ G_dot @ Y) + contract(alpha / W, H) + contract(H, beta / W)
    if W_dot is not None:
        inner = inner + W_dot * H
    return X @ (W * H) @ Y.T, X @ inner @ Y.T
