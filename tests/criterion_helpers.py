"""Oracles for tests/test_criterion.py: points built from THEORY §2 formulas, and the
hand-derived two-layer fibre/leaf linear algebra, all in plain numpy (no autodiff)."""

import numpy as np


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def relaxed_balanced_two_layer(rng, n: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Square factors with `C = U2^T U2 - U1 U1^T = lam I`: `U1 = W Σ1 Y^T`, `U2 = X Σ2 W^T`,
    `Σ2² = Σ1² + lam` (THEORY §2)."""
    X, W, Y = orthogonal(rng, n), orthogonal(rng, n), orthogonal(rng, n)
    s1 = rng.uniform(0.5, 1.5, n) + max(0.0, -lam) ** 0.5
    s2 = np.sqrt(s1**2 + lam)
    return W @ np.diag(s1) @ Y.T, X @ np.diag(s2) @ W.T


def relaxed_balanced_rectangular(
    rng, n0: int, r: int, n2: int, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular factors `U1` (r × n0), `U2` (n2 × r), r ≤ n2, with `U2^T U2 - U1 U1^T = lam I`:
    `U1` Gaussian, `U2 = Q (U1 U1^T + lam I)^{1/2}` with Q (n2 × r) orthonormal columns."""
    U1 = rng.standard_normal((r, n0))
    w, E = np.linalg.eigh(U1 @ U1.T + lam * np.eye(r))
    U2 = orthogonal(rng, n2)[:, :r] @ E @ np.diag(np.sqrt(w)) @ E.T
    return U1, U2


def non_isotropic_two_layer(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Square factors whose conserved `C` has eigenvalues spread over [-0.5, 1.5]:
    `U2 = X (C + U1 U1^T)^{1/2}` with `U1 U1^T ⪰ 0.6 I`."""
    U1 = orthogonal(rng, n) @ np.diag(rng.uniform(0.8, 1.5, n)) @ orthogonal(rng, n)
    Q = orthogonal(rng, n)
    c = np.linspace(-0.5, 1.5, n)
    C = Q @ np.diag(c) @ Q.T
    w, E = np.linalg.eigh(C + U1 @ U1.T)
    U2 = orthogonal(rng, n) @ E @ np.diag(np.sqrt(w)) @ E.T
    return U1, U2


def relaxed_balanced_deep(rng, n: int, depth: int, lams) -> list[np.ndarray]:
    """Square deep factors `U_j = X_{j+1} Σ_j X_j^T`, `σ_{j,k}² = a_k + c_j`,
    `c_j = λ_1 + … + λ_{j-1}`, so that `C_j = λ_j I` (THEORY §2)."""
    c = np.concatenate([[0.0], np.cumsum(lams)])
    a = rng.uniform(0.5, 1.5, n) + max(0.0, -c.min())
    X = [orthogonal(rng, n) for _ in range(depth + 1)]
    return [X[j + 1] @ np.diag(np.sqrt(a + c[j])) @ X[j].T for j in range(depth)]


def null_space(A: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    _, s, Vt = np.linalg.svd(A)
    rank = int(np.sum(s > rtol * s[0])) if s.size else 0
    return Vt[rank:].T


def two_layer_oracle(U1: np.ndarray, U2: np.ndarray) -> tuple[int, np.ndarray, float]:
    """The hand-derived intersection `ker ∂φ ∩ ker ∂C` for `z = U2 U1` and the residual of
    `node_flow.criterion.KernelInclusion`, by explicit matrices.

    Fibre directions `v(ξ) = (ξ U1, −U2 ξ)`, `ξ ∈ R^{r×r}`; inside the leaf iff
    `ξ^T B + B ξ + ξ A + A ξ^T = 0` with `A = U1 U1^T`, `B = U2^T U2`. Along `v(ξ)`,
    `∂M[v] = −(U2 S U2^T) ⊗ I + I ⊗ (U1^T S U1)`, `S = ξ + ξ^T`, since
    `M = (U2 U2^T) ⊗ I + I ⊗ (U1^T U1)` (row-major vec). Returns (dimension, orthonormal basis
    in flat θ = (U1, U2) coordinates, residual)."""
    r, n0 = U1.shape
    n2 = U2.shape[0]
    A, B = U1 @ U1.T, U2.T @ U2
    E = [np.eye(r * r)[i].reshape(r, r) for i in range(r * r)]
    lyap = np.stack([(e.T @ B + B @ e + e @ A + A @ e.T).ravel() for e in E], axis=1)
    xis = null_space(lyap).T.reshape(-1, r, r)
    fibre = np.stack([np.concatenate([(x @ U1).ravel(), (-U2 @ x).ravel()]) for x in xis], 1)
    basis, R = np.linalg.qr(fibre)
    # express the orthonormal basis back in ξ coordinates: basis = fibre R^{-1}
    xis = np.einsum("kij,kl->lij", xis, np.linalg.inv(R))
    J = np.concatenate([np.kron(U2, np.eye(n0)), np.kron(np.eye(n2), U1.T)], axis=1)
    dM, dJ = [], []
    for x in xis:
        S = x + x.T
        dM.append(-np.kron(U2 @ S @ U2.T, np.eye(n0)) + np.kron(np.eye(n2), U1.T @ S @ U1))
        d1, d2 = x @ U1, -U2 @ x
        dJ.append(np.concatenate([np.kron(d2, np.eye(n0)), np.kron(np.eye(n2), d1.T)], axis=1))
    dM, dJ = np.stack(dM).reshape(len(xis), -1), np.stack(dJ).reshape(len(xis), -1)
    top = lambda K: np.sqrt(max(np.linalg.eigvalsh(K)[-1], 0.0)) if K.size else 0.0
    num, den = top(dM @ dM.T), 2 * np.linalg.norm(J, 2) * top(dJ @ dJ.T)
    return basis.shape[1], basis, (num / den if den > 0 else 0.0)
