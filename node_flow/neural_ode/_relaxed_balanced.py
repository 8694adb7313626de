r"""Relaxed balanced weight functions $A = K + R S_0 R^\top + (\frac12\int_0^s\lambda) I$
and their exactly relaxed balanced depth-$L$ residual discretizations (THEORY §3)."""

import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._basis import AbstractBasis
from .._checks import as_count, as_float_dtype, as_real_array, as_scale, CountLike, ScaleLike
from .._neural_ode import LinearNeuralODE
from .._residual import ResidualLinearNetwork


_QUADRATURE_POINTS = 64
# The λ profile is probed on this many equispaced depths (the nodes of the grids m = 2, 4, …, 32
# among them) to refuse a profile that is not scalar or not finite on [0, 1] before any solve.
_PROFILE_PROBES = 33
LambdaProfile = Callable[[Array], Array] | ScaleLike


def _gauss_legendre01(dtype):
    x, w = np.polynomial.legendre.leggauss(_QUADRATURE_POINTS)
    return jnp.asarray((x + 1) / 2, dtype), jnp.asarray(w / 2, dtype)


def _as_profile(lam: LambdaProfile) -> Callable[[Array], Array]:
    if callable(lam):
        return lam
    if isinstance(lam, (bool, np.bool_)) or not isinstance(
        lam, (numbers.Real, np.ndarray, jax.Array)
    ):
        raise TypeError(
            "relaxed_balanced: `lam` must be a real constant or a JAX function s ↦ λ(s); "
            f"got {type(lam).__name__} {lam!r}."
        )
    if jnp.ndim(lam) != 0 or jnp.issubdtype(jnp.result_type(lam), jnp.complexfloating):
        raise ValueError(f"relaxed_balanced: a constant `lam` must be a real scalar; got {lam!r}.")
    value = float(lam)
    return lambda s: jnp.full_like(s, value)


class RelaxedBalancedWeights(eqx.Module):
    r"""The relaxed balanced weight function of THEORY §3,

    $$A(s) = K + R(s) S_0 R(s)^\top + \mu(s) I, \quad R(s) = e^{sK},\quad
      \mu(s) = \tfrac12 \int_0^s \lambda,$$

    with $K$ skew and $S_0$ symmetric. Its conservation law is exactly
    $\Lambda(s) = \lambda(s) I$ and its lifting is
    $\Phi(1, 0) = R(1)\, e^{S_0}\, e^{\int_0^1 \mu}$ (since
    $\Phi(s,0) = R(s) e^{s S_0} e^{\int_0^s \mu}$ solves $\partial_s\Phi = A\Phi$).

    `lam` is a scalar profile $s \mapsto \lambda(s)$ (a JAX function) or a constant.
    """

    K: Float[Array, "n n"]
    S0: Float[Array, "n n"]
    lam: Callable = eqx.field(static=True)

    def __init__(self, K, S0, lam: LambdaProfile):
        fname = "RelaxedBalancedWeights"
        K = as_real_array(fname, "K", K, ndim=2)
        S0 = as_real_array(fname, "S0", S0, ndim=2)
        if K.shape[0] != K.shape[1] or S0.shape != K.shape or K.dtype != S0.dtype:
            raise ValueError(
                f"{fname}: K and S0 must be n×n of one dtype; got {K.shape} {K.dtype}, "
                f"{S0.shape} {S0.dtype}."
            )
        if not (np.allclose(K, -K.T, atol=1e-12) and np.allclose(S0, S0.T, atol=1e-12)):
            raise ValueError(f"{fname}: K must be skew and S0 symmetric.")
        self.K, self.S0 = K, S0
        self.lam = _as_profile(lam)
        probe = jnp.linspace(0.0, 1.0, _PROFILE_PROBES, dtype=K.dtype)
        values = jax.vmap(self.lam)(probe)
        if values.shape != probe.shape:
            raise ValueError(
                f"{fname}: the λ profile must map a scalar s to a scalar; "
                f"got output shape {values.shape[1:]} per point."
            )
        if not np.all(np.isfinite(np.asarray(values))):
            raise ValueError(f"{fname}: the λ profile is not finite on [0, 1].")

    @property
    def n(self) -> int:
        return self.K.shape[0]

    def mu(self, s: Float[ArrayLike, ""]) -> Float[Array, ""]:
        r"""$\mu(s) = \frac12\int_0^s \lambda$ (64-point Gauss–Legendre)."""
        x, w = _gauss_legendre01(self.K.dtype)
        return 0.5 * s * jnp.sum(w * jax.vmap(self.lam)(s * x))

    def double_integral(self) -> Float[Array, ""]:
        r"""$\int_0^1 \mu = \frac12 \int_0^1 (1 - r)\lambda(r)\, dr$."""
        x, w = _gauss_legendre01(self.K.dtype)
        return 0.5 * jnp.sum(w * (1 - x) * jax.vmap(self.lam)(x))

    def at(self, s: Float[ArrayLike, "*batch"]) -> Float[Array, "*batch n n"]:
        r"""$A(s)$."""
        s = jnp.asarray(s, dtype=self.K.dtype)

        def one(x):
            R = expm(x * self.K)
            return self.K + R @ self.S0 @ R.T + self.mu(x) * jnp.eye(self.n, dtype=x.dtype)

        return jax.vmap(one)(s.reshape(-1)).reshape(s.shape + (self.n, self.n))

    def z0(self) -> Float[Array, "n n"]:
        r"""The exact lifting $\Phi(1,0) = e^{K} e^{S_0} e^{\int_0^1\mu}$."""
        return expm(self.K) @ expm(self.S0) * jnp.exp(self.double_integral())

    def grid(
        self, m: CountLike, interpolation: str | AbstractBasis = "linear", **kwargs
    ) -> LinearNeuralODE:
        """The weight function sampled at the nodes of `m` cells, as a `LinearNeuralODE`
        (`m` an integer ≥ 1; further keywords go to [`node_flow.LinearNeuralODE`][])."""
        m = as_count("relaxed_balanced", "m", m)
        nodes = jnp.linspace(0.0, 1.0, m + 1, dtype=self.K.dtype)
        return LinearNeuralODE(self.at(nodes), interpolation, **kwargs)

    def lambdas(self, L: CountLike) -> Float[Array, " laws"]:
        r"""The imbalances $\lambda_k = \lambda(k/L)/L^2$, $k = 1..L-1$, of depth $L$."""
        L = as_count("RelaxedBalancedWeights.lambdas", "L", L)
        s = jnp.arange(1, L, dtype=self.K.dtype) / L
        return jax.vmap(self.lam)(s) / L**2

    def residual(self, L: CountLike) -> ResidualLinearNetwork:
        r"""An exactly relaxed balanced depth-$L$ residual network converging to $A$.

        With $S_0 = Q \operatorname{diag}(d) Q^\top$ and $s_k = k/L$:
        $U_k = R(s_k) Q \Sigma_k Q^\top R(s_{k-1})^\top$, $\sigma_{k,j}^2 = a_j + c_k$,
        $a_j = e^{2 d_j / L}$, $c_k = \sum_{i<k} \lambda_i$, $\lambda_i = \lambda(i/L)/L^2$.
        The singular frames are shared between neighbours (THEORY §2), so
        $C_k = U_{k+1}^\top U_{k+1} - U_k U_k^\top = \lambda_k I$ to rounding, and
        $L(U_k - I) = A(s) + O(1/L)$ on cell $k$ (since $\sigma_{k,j} = 1 + (d_j +
        \mu(s_k))/L + O(L^{-2})$). Raises a `ValueError` if some $a_j + c_k \le 0$.
        """
        L = as_count("relaxed_balanced_residual", "L", L)
        d, Q = np.linalg.eigh(np.asarray(self.S0, dtype=np.float64))
        c = np.concatenate([[0.0], np.cumsum(np.asarray(self.lambdas(L), dtype=np.float64))])
        sigma2 = np.exp(2 * d / L)[None, :] + c[:, None]
        worst = float(np.min(sigma2))
        if not worst > 0:
            raise ValueError(
                f"relaxed_balanced_residual: the λ profile is infeasible at depth L = {L}: "
                f"σ²_(k,j) = a_j + c_k reaches {worst:.3g} ≤ 0 (the cumulative imbalance "
                "c_k = Σ_(i<k) λ(i/L)/L² is too negative). Increase L or S0, or raise λ."
            )
        A = _residual_weights(self.K, Q, sigma2)
        return ResidualLinearNetwork(jnp.asarray(A, self.K.dtype))


def _residual_weights(K, Q, sigma2) -> np.ndarray:
    r"""$A_k = L(U_k - I)$, $U_k = R(s_k) Q \Sigma_k Q^\top R(s_{k-1})^\top$, on the host in
    float64. The rotations $R(s) = e^{sK}$ of the skew $K$ come from one Hermitian
    eigendecomposition $iK = V \operatorname{diag}(\omega) V^*$, $R(s) = V
    \operatorname{diag}(e^{-is\omega}) V^*$: orthogonal to rounding at every $s$, vectorized
    over the $L + 1$ depths, and without a compilation per depth."""
    K, Q, sigma2 = (np.asarray(x, dtype=np.float64) for x in (K, Q, sigma2))
    L, n = sigma2.shape
    omega, V = np.linalg.eigh(1j * K)
    s = np.arange(L + 1) / L
    R = np.einsum("ij,sj,kj->sik", V, np.exp(-1j * s[:, None] * omega), V.conj()).real
    frames = R @ Q
    U = frames[1:] * np.sqrt(sigma2)[:, None, :] @ np.swapaxes(frames[:-1], -1, -2)
    return L * (U - np.eye(n))


def relaxed_balanced_weights(
    key: PRNGKeyArray,
    n: CountLike,
    lam: LambdaProfile = 0.0,
    *,
    scale: ScaleLike = 0.5,
    skew: ScaleLike = 0.5,
    same_z0: bool = False,
    dtype=None,
) -> RelaxedBalancedWeights:
    r"""A random relaxed balanced weight function: $K$ skew and $S_0$ symmetric with
    Gaussian entries of size `skew / √n` and `scale / √n`. The same `key` gives the same
    $K$, $S_0$ whatever `lam`. `scale` must be positive and finite (the rule of every
    initialization); `skew` finite and $\ge 0$ ($K = 0$, no rotation, is allowed).

    With `same_z0=True`, $S_0$ is shifted to $S_0 - (\int_0^1\mu) I$, which leaves
    $\Lambda = \lambda I$ unchanged (a constant multiple of $I$ commutes with everything)
    and makes the lifting $z_0 = e^K e^{S_0}$ the same for every profile $\lambda(\cdot)$.
    """
    fname = "relaxed_balanced_weights"
    n = as_count(fname, "n", n)
    dtype = as_float_dtype(fname, dtype)
    scale = as_scale(fname, "scale", scale, static=True)
    skew = as_scale(fname, "skew", skew, allow_zero=True, static=True)
    kK, kS = jax.random.split(key)
    B = jax.random.normal(kK, (n, n), dtype)
    C = jax.random.normal(kS, (n, n), dtype)
    K = skew * (B - B.T) / (2 * n) ** 0.5
    S0 = scale * (C + C.T) / (2 * n) ** 0.5
    weights = RelaxedBalancedWeights(K, S0, lam)
    if same_z0:
        shift = weights.double_integral() * jnp.eye(n, dtype=dtype)
        weights = RelaxedBalancedWeights(K, S0 - shift, lam)
    return weights


def relaxed_balanced(
    key: PRNGKeyArray,
    n: CountLike,
    m: CountLike,
    lam: LambdaProfile = 0.0,
    *,
    interpolation: str = "linear",
    scale: ScaleLike = 0.5,
    skew: ScaleLike = 0.5,
    same_z0: bool = False,
    dtype=None,
    **kwargs,
) -> LinearNeuralODE:
    r"""A relaxed balanced weight function $A = K + R S_0 R^\top + (\frac12\int_0^s\lambda) I$
    (THEORY §3) sampled on a grid of `m` cells: a [`node_flow.LinearNeuralODE`][].

    **Arguments:** `key`; `n` (width); `m` (cells); `lam` (the profile $\lambda(s)$, a JAX
    scalar function or a constant); `interpolation`; `scale`, `skew` (sizes of $S_0$, $K$);
    `same_z0` (shift $S_0$ so that $z_0$ does not depend on `lam`); further keywords go
    to `LinearNeuralODE` (`solver`, `stepsize_controller` or `rtol`/`atol`, `adjoint`,
    `max_steps`, `dt0`). Counts (`n`, `m`) are integers (NumPy and JAX integers too);
    `scale` is positive and finite, `skew` finite and $\ge 0$. See
    [`node_flow.neural_ode.RelaxedBalancedWeights`][] for the exact $z_0$ and more.
    """
    weights = relaxed_balanced_weights(
        key, n, lam, scale=scale, skew=skew, same_z0=same_z0, dtype=dtype
    )
    return weights.grid(m, interpolation, **kwargs)


def relaxed_balanced_residual(
    key: PRNGKeyArray,
    n: CountLike,
    lam: LambdaProfile = 0.0,
    L: CountLike = 16,
    *,
    scale: ScaleLike = 0.5,
    skew: ScaleLike = 0.5,
    same_z0: bool = False,
    dtype=None,
) -> ResidualLinearNetwork:
    r"""A depth-`L` residual network that is **exactly** relaxed balanced,
    $C_k = \lambda(k/L)/L^2 \cdot I$, and converges (at first order) to the weight function
    that [`node_flow.neural_ode.relaxed_balanced`][] builds from the same `key`, `n`, `lam`.
    See [`node_flow.neural_ode.RelaxedBalancedWeights.residual`][]."""
    weights = relaxed_balanced_weights(
        key, n, lam, scale=scale, skew=skew, same_z0=same_z0, dtype=dtype
    )
    return weights.residual(L)
