"""`effective_rank` against its definition (Roy & Vetterli 2007) computed with NumPy, and
against closed forms: k equal nonzero singular values give exactly k."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import node_flow as nf


RTOL = 1e-12  # an SVD and a sum of k ≤ 6 logs in float64: a few hundred ulps at most.


def numpy_effective_rank(z: np.ndarray) -> float:
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def test_effective_rank_matches_numpy_definition_on_a_batch():
    z = np.random.default_rng(0).normal(size=(2, 3, 4, 6))
    z[1, 2] = np.outer(z[1, 2, :, 0], z[1, 2, 0])  # one rank-1 matrix in the batch
    got = np.asarray(nf.effective_rank(jnp.asarray(z)))
    assert got.shape == (2, 3)
    expected = np.array([[numpy_effective_rank(m) for m in row] for row in z])
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    assert abs(got[1, 2] - 1.0) <= RTOL  # rank 1: a single p_k = 1


@pytest.mark.parametrize("k, shape", [(1, (3, 5)), (2, (4, 4)), (3, (6, 3))])
def test_k_equal_singular_values_give_effective_rank_k(k, shape):
    """Closed form: p_k = 1/k for k equal σ's, entropy log k. Scale invariance too."""
    q1, _ = np.linalg.qr(np.random.default_rng(k).normal(size=(shape[0], shape[0])))
    q2, _ = np.linalg.qr(np.random.default_rng(k + 10).normal(size=(shape[1], shape[1])))
    z = 3.7 * q1[:, :k] @ q2[:, :k].T
    assert abs(float(nf.effective_rank(jnp.asarray(z))) - k) <= RTOL * k
    assert abs(float(nf.effective_rank(jnp.asarray(-1e-8 * z))) - k) <= RTOL * k


def test_zero_and_empty_matrices_have_effective_rank_zero_without_nan():
    z = np.random.default_rng(1).normal(size=(3, 2, 2))
    z[1] = 0.0
    got = np.asarray(nf.effective_rank(jnp.asarray(z)))
    assert got[1] == 0.0 and np.all(np.isfinite(got))
    assert float(nf.effective_rank(jnp.zeros((0, 4)))) == 0.0
    assert np.all(np.isfinite(np.asarray(jax.grad(nf.effective_rank)(jnp.zeros((2, 2))))))


def test_effective_rank_gradient_matches_central_differences():
    """Generic z (distinct σ's): differentiable. Central differences with h = 1e-5 have
    truncation error O(h²) ~ 1e-10 and round-off ~1e-16/h ~ 1e-11."""
    z = np.random.default_rng(2).normal(size=(3, 4))
    grad = np.asarray(jax.grad(nf.effective_rank)(jnp.asarray(z)))
    h, fd = 1e-5, np.zeros(z.shape)
    for idx in np.ndindex(z.shape):
        e = np.zeros(z.shape)
        e[idx] = h
        fd[idx] = (float(nf.effective_rank(z + e)) - float(nf.effective_rank(z - e))) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-8)


def test_effective_rank_refuses_vectors_and_nonfinite_input():
    with pytest.raises(ValueError, match=r"effective_rank: z must have at least two axes.*\(5,\)"):
        nf.effective_rank(jnp.ones(5))
    with pytest.raises(ValueError, match="effective_rank: z.*non-finite"):
        nf.effective_rank(jnp.array([[1.0, jnp.nan]]))
    assert abs(float(nf.effective_rank(np.eye(3, dtype=int))) - 3) <= RTOL * 3
