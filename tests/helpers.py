"""Independent oracles for the tests: closed forms and plain linear algebra, written
without node_flow's own kernels or flows."""

import jax
import jax.numpy as jnp
import numpy as np


def max_abs(x) -> float:
    return float(jnp.max(jnp.abs(x)))


def rel_err(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-300))


def psd_power(P, p):
    """P^p for symmetric PSD P by eigh, tiny negative eigenvalues clipped (REFERENCES)."""
    P = np.asarray(P)
    w, V = np.linalg.eigh(0.5 * (P + P.T))
    w = np.clip(w, 0.0, None)
    wp = np.where(w > 0, w**p, 1.0 if p == 0 else 0.0)
    return (V * wp) @ V.T


def arora_kernel(z, G, L):
    """Arora et al. (2018): sum_j (zz^T)^{(L-j)/L} G (z^T z)^{(j-1)/L}."""
    z, G = np.asarray(z), np.asarray(G)
    return sum(
        psd_power(z @ z.T, (L - j) / L) @ G @ psd_power(z.T @ z, (j - 1) / L)
        for j in range(1, L + 1)
    )


def two_layer_kernel(z, G, lam):
    """THEORY §2, L = 2: (λ/2 + (zzᵀ + λ²/4)^{1/2}) G + G (−λ/2 + (zᵀz + λ²/4)^{1/2})."""
    z, G = np.asarray(z), np.asarray(G)
    n_out, n_in = z.shape
    left = lam / 2 * np.eye(n_out) + psd_power(z @ z.T + lam**2 / 4 * np.eye(n_out), 0.5)
    right = -lam / 2 * np.eye(n_in) + psd_power(z.T @ z + lam**2 / 4 * np.eye(n_in), 0.5)
    return left @ G + G @ right


def neural_ode_kernel_quadrature(z, G, points=200):
    """∫_0^1 (zzᵀ)^{1-s} G (zᵀz)^s ds by Gauss–Legendre quadrature with eigh powers."""
    z, G = np.asarray(z), np.asarray(G)
    x, w = np.polynomial.legendre.leggauss(points)
    s, w = (x + 1) / 2, w / 2
    return sum(wi * psd_power(z @ z.T, 1 - si) @ G @ psd_power(z.T @ z, si) for si, wi in zip(s, w))


def saxe_mode(t, s, u0):
    """Saxe et al. (2014) eq. 12: u(t) = s e^{2st} / (e^{2st} − 1 + s/u0)."""
    e = np.exp(2 * s * t)
    return s * e / (e - 1 + s / u0)


def fit_slope(x, y):
    """Least-squares slope of log y against log x, and its standard error."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    A = np.stack([lx, np.ones_like(lx)], axis=1)
    coef, res, *_ = np.linalg.lstsq(A, ly, rcond=None)
    dof = max(len(lx) - 2, 1)
    sigma2 = float(res[0]) / dof if res.size else 0.0
    cov = sigma2 * np.linalg.inv(A.T @ A)
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


def random_orthogonal(key, n):
    Q, R = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    return Q * jnp.sign(jnp.diagonal(R))


def quartic_loss(z):
    """A loss that is not least squares: ¼ ||zᵀz − I||_F²."""
    return 0.25 * jnp.sum((z.T @ z - jnp.eye(z.shape[1], dtype=z.dtype)) ** 2)
