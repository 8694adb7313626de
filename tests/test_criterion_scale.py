"""The structured count of `node_flow.criterion.two_layer_conservation_laws` against the
dense Lie trace and the closed form n_1(n_1 + 1)/2 (Marcotte, Gribonval & Peyré 2023)."""

import jax
import numpy as np
import pytest

from node_flow.criterion import conservation_laws, liftings, two_layer_conservation_laws


@pytest.mark.parametrize("widths", [(4, 4, 4), pytest.param((5, 3, 4), marks=pytest.mark.slow)])
def test_structured_count_matches_the_dense_trace_and_the_closed_form(widths):
    phi = liftings.deep_linear(widths)
    theta = phi.sample(jax.random.key(1))
    dense = conservation_laws(phi, theta)
    fast = two_layer_conservation_laws(theta)
    n1 = widths[1]
    assert fast.count == dense.count == n1 * (n1 + 1) // 2
    assert fast.lie.dims == dense.lie.dims
    assert fast.lie.rank_jacobian == dense.lie.rank_jacobian
    # Same random brackets, same projections (onto ker ∂φ, in another orthonormal basis):
    # a gap set by a kept singular value agrees up to rounding (≈ 1e-12 relative; 1e-6
    # leaves room for other summation orders and catches a wrong coordinate map, which
    # changes it at O(1)). A gap set by a dropped value at the rounding floor (≈ 1e-16,
    # gap ≈ τ/1e-16 ≳ 1e7) is reproduced only in size by two summation orders: there
    # both must clear min_gap = 100 by far (> 1e6).
    fast_gaps, dense_gaps = np.asarray(fast.lie.gaps), np.asarray(dense.lie.gaps)
    same = np.isclose(fast_gaps, dense_gaps, rtol=1e-6, atol=0.0)
    assert np.all(same | (np.minimum(fast_gaps, dense_gaps) > 1e6)), (fast_gaps, dense_gaps)
    assert same[0]  # depth 1: the Kronecker-sum singular values against the dense SVD


def test_structured_count_refuses_a_kernel_it_does_not_parametrize():
    # n_1 > min(n_0, n_2): ker ∂φ is larger than the orbit tangent {(X U_1, -U_2 X)}.
    phi = liftings.deep_linear((3, 4, 5))
    with pytest.raises(ValueError, match="two_layer_conservation_laws: .*dense path"):
        two_layer_conservation_laws(phi.sample(jax.random.key(0)))


def test_structured_count_refuses_a_non_generic_point():
    theta = (np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-generic"):
        two_layer_conservation_laws(theta)
