"""The intrinsic kernel of the linear neural ODE (THEORY §3)."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import guard
from ._spectral import apply_in_singular_basis, check_square_pair, spectral_tangent


_SERIES_BELOW = 1e-3

_DD_SERIES_BELOW = 1e-2
r"""Below this spread of its three arguments, $\exp[x, y, z]$ is summed as a series (error
$\le 7\cdot 10^{-12}/8! \approx 2\cdot 10^{-16}$ relative); above, the difference quotient loses
at most $\varepsilon / 10^{-2}$ relative."""

_SINGULAR_RTOL_ULPS = 10
r"""$z$ counts as singular when $\sigma_{\min} \le 10\, n\, \varepsilon\, \sigma_{\max}$. A
backward-stable SVD returns singular values with absolute errors up to $\approx n \varepsilon
\sigma_{\max}$, so a smaller $\sigma_{\min}$ is indistinguishable from 0 and
$\ln \sigma_{\min}^2$ (hence $K_\infty$) would be rounding noise; the factor 10 is a margin."""


def _sinhc(x: Array) -> Array:
    r"""$\sinh(x)/x$, by its Taylor series $1 + x^2/6 + x^4/120$ for $|x| < 10^{-3}$
    (truncation error $< 10^{-21}$) and directly elsewhere (no cancellation there)."""
    small = jnp.abs(x) < _SERIES_BELOW
    x_safe = jnp.where(small, 1.0, x)
    x2 = x * x
    return jnp.where(small, 1.0 + x2 / 6.0 + x2 * x2 / 120.0, jnp.sinh(x_safe) / x_safe)


def log_mean_weights(s2: Float[Array, " n"]) -> Float[Array, "n n"]:
    r"""The logarithmic means $W_{kl} = (s_k^2 - s_l^2)/(\ln s_k^2 - \ln s_l^2)$, $W_{kk} = s_k^2$.

    Written as $W_{kl} = e^{(u_k + u_l)/2}\, \operatorname{sinhc}((u_k - u_l)/2)$ with
    $u = \ln s^2$: no $0/0$ when singular values coincide, full relative accuracy when they
    nearly coincide. It is the divided difference $\exp[u_k, u_l]$.
    """
    u = jnp.log(s2)
    return jnp.exp(0.5 * (u[:, None] + u[None, :])) * _sinhc(0.5 * (u[:, None] - u[None, :]))


def exp_second_divided_differences(u: Float[Array, " n"]) -> Float[Array, "n n n"]:
    r"""$S_{kml} = \exp[u_k, u_m, u_l]$, the second divided differences of $\exp$.

    With the arguments sorted, $x_0 \le x_1 \le x_2$, $a = x_0 - x_1$, $b = x_2 - x_1$ and
    $\varphi(h) = (e^h - 1)/h = e^{h/2}\operatorname{sinhc}(h/2)$:
    $\exp[x_0, x_1, x_2] = e^{x_1}\, (\varphi(b) - \varphi(a)) / (b - a)$, whose denominator is
    the largest gap; when $b - a <$ `_DD_SERIES_BELOW`, the series
    $e^{x_1} \sum_{n \ge 2} h_{n-2}(a, b)/n!$ ($h_k$ the complete homogeneous polynomials).
    """
    grid = jnp.stack(jnp.broadcast_arrays(u[:, None, None], u[None, :, None], u[None, None, :]))
    lo, mid, hi = jnp.sort(grid, axis=0)
    a, b = lo - mid, hi - mid
    spread = b - a
    close = spread < _DD_SERIES_BELOW
    phi = lambda h: jnp.exp(0.5 * h) * _sinhc(0.5 * h)
    direct = (phi(b) - phi(a)) / jnp.where(close, 1.0, spread)
    series, h_k, factorial = jnp.zeros_like(a), jnp.ones_like(a), 2.0
    for k in range(6):  # h_0 .. h_5: a fixed, short series
        series = series + h_k / factorial
        h_k = a ** (k + 1) + b * h_k
        factorial *= k + 3
    return jnp.exp(mid) * jnp.where(close, series, direct)


def _singular_values(z: Float[Array, "n n"]):
    """The SVD of `z`, with the singular-z error of [`node_flow.kernels.neural_ode`][]."""
    X, s, Yt = jnp.linalg.svd(z)
    rtol = _SINGULAR_RTOL_ULPS * z.shape[0] * float(np.finfo(z.dtype).eps)
    s = guard(
        s,
        ~(s[-1] > rtol * s[0]),
        "kernels.neural_ode: z is singular (or not finite): σ_min/σ_max is at most "
        f"{rtol:.3g} (10·n·ε, the resolution of the SVD); K_∞ involves ln s_k² and is only "
        "defined for invertible z (the neural-ODE lifting Φ(1, 0) always is: check the flow "
        "that produced z, or use float64).",
    )
    return X, s, Yt.T


@jax.custom_jvp
def _neural_ode(z, G):
    X, s, Y = _singular_values(z)
    return apply_in_singular_basis(X, log_mean_weights(s**2), Y, G)


@_neural_ode.defjvp
def _neural_ode_jvp(primals, tangents):
    (z, G), (z_dot, G_dot) = primals, tangents
    X, s, Y = _singular_values(z)
    u = jnp.log(s**2)
    W = log_mean_weights(s**2)
    return spectral_tangent(X, s, Y, W, exp_second_divided_differences(u), G, z_dot, G_dot)


def neural_ode(z: Float[ArrayLike, "..."], G: Float[ArrayLike, "..."]) -> Float[Array, "n n"]:
    r"""The intrinsic kernel $K_\infty(z)[G]$ of the relaxed balanced linear neural ODE.

    $$K_\infty(z)[G] = \int_0^1 (zz^\top)^{1-s}\, G\, (z^\top z)^{s}\, ds
      = X \big(W \circ (X^\top G Y)\big) Y^\top, \quad
      W_{kl} = \frac{s_k^2 - s_l^2}{\ln s_k^2 - \ln s_l^2},\ W_{kk} = s_k^2,$$

    for $z = X \operatorname{diag}(s) Y^\top$. It does not depend on the imbalance profile
    $\lambda(\cdot)$ (THEORY §3). It is the $L \to \infty$ limit of
    $\frac1L$ [`node_flow.kernels.relaxed_balanced`][].

    **Derivatives** (`jax.grad`, `jax.jvp`, implicit solvers): by divided differences of the
    weights (Daleckii–Krein, see `node_flow/kernels/_spectral.py`), exact at repeated and
    nearly repeated singular values, where autodiff through the SVD is NaN or wrong.

    **Raises:** `ValueError` if `z` holds NaN or inf (`eqx.error_if` under `jit`); an error
    "z is singular" when $\sigma_{\min}/\sigma_{\max} \le 10\,n\,\varepsilon$ (the neural-ODE
    lifting $\Phi(1, 0)$ is always invertible; $K_\infty$ involves $\ln s_k^2$). Inside
    a flow the singular-z check gives NaN instead, which the flow reports in its result
    (the solver may reject the stage; see `node_flow._checks.guard`).
    """
    z, G = check_square_pair("kernels.neural_ode", z, G)
    return _neural_ode(z, G)
