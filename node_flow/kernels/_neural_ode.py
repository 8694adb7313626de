"""The intrinsic kernel of the linear neural ODE (THEORY §3)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._spectral import apply_in_singular_basis, check_square_pair


_SERIES_BELOW = 1e-3


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
    nearly coincide.
    """
    u = jnp.log(s2)
    return jnp.exp(0.5 * (u[:, None] + u[None, :])) * _sinhc(0.5 * (u[:, None] - u[None, :]))


def neural_ode(z: Float[ArrayLike, "..."], G: Float[ArrayLike, "..."]) -> Float[Array, "n n"]:
    r"""The intrinsic kernel $K_\infty(z)[G]$ of the relaxed balanced linear neural ODE.

    $$K_\infty(z)[G] = \int_0^1 (zz^\top)^{1-s}\, G\, (z^\top z)^{s}\, ds
      = X \big(W \circ (X^\top G Y)\big) Y^\top, \quad
      W_{kl} = \frac{s_k^2 - s_l^2}{\ln s_k^2 - \ln s_l^2},\ W_{kk} = s_k^2,$$

    for $z = X \operatorname{diag}(s) Y^\top$. It does not depend on the imbalance profile
    $\lambda(\cdot)$ (THEORY §3). It is the $L \to \infty$ limit of
    $\frac1L$ [`node_flow.kernels.relaxed_balanced`][].

    `z` must be invertible (the neural-ODE lifting $\Phi(1, 0)$ always is); a singular `z`
    raises an error.
    """
    z, G = check_square_pair("kernels.neural_ode", z, G)
    X, s, Yt = jnp.linalg.svd(z)
    s = eqx.error_if(
        s,
        ~(jnp.min(s) > 0),
        "kernels.neural_ode: z is singular (smallest singular value 0 or not finite); "
        "K_∞ involves ln s_k² and is only defined for invertible z.",
    )
    return apply_in_singular_basis(X, log_mean_weights(s**2), Yt.T, G)
