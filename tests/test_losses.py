"""Losses of z: least squares, matrix sensing, matrix completion.

Oracles: the defining sums written with NumPy loops over the measurements / observed
entries, and `jax.grad` of direct implementations that share no code with node_flow
(an explicit sum over i for sensing, a dense 0/1 mask for completion). All in float64,
where a sum of ~30 products loses at most ~30 ulps: the tolerances are 1e-13 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import node_flow as nf


RTOL = 1e-13  # float64 round-off of sums of a few dozen terms, with margin.


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def sensing_problem(m=7, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, *shape)), rng.normal(size=m), rng.normal(size=shape)


def completion_problem(m=9, shape=(4, 5), seed=0):
    rng = np.random.default_rng(seed)
    flat = rng.choice(shape[0] * shape[1], m, replace=False)  # unsorted, distinct
    rows, cols = np.divmod(flat, shape[1])
    return rows, cols, rng.normal(size=m), rng.normal(size=shape)


def test_least_squares_refuses_zero_examples_complex_and_nonfinite_data():
    """Issue 11: N = 0 used to give NaN losses reported as success."""
    for X, Y in [(np.ones((3, 0)), np.ones((2, 0))), (jnp.ones((1, 0)), jnp.ones((4, 0)))]:
        with pytest.raises(ValueError, match=r"LeastSquares: .*N = 0 examples.*at least one"):
            nf.LeastSquares(X, Y)
    with pytest.raises(TypeError, match="LeastSquares: X must be real; got a complex"):
        nf.LeastSquares(np.ones((3, 4)) + 1j, np.ones((2, 4)))
    with pytest.raises(TypeError, match="LeastSquares: Y must be real"):
        nf.LeastSquares(np.ones((3, 4)), jnp.ones((2, 4), dtype=jnp.complex64))
    for bad in (np.nan, np.inf, -np.inf):
        Y = np.ones((2, 4))
        Y[1, 2] = bad
        with pytest.raises(ValueError, match=r"LeastSquares: Y holds 1 non-finite.*\(1, 2\)"):
            nf.LeastSquares(np.ones((3, 4)), Y)
    with pytest.raises(TypeError, match="numeric"):
        nf.LeastSquares(np.array([["a"]]), np.ones((1, 1)))


def test_least_squares_casts_integer_data_and_promotes_mixed_precision():
    X, Y = np.arange(6).reshape(2, 3), np.ones((1, 3), dtype=np.float32)
    loss = nf.LeastSquares(X, Y)
    assert loss.X.dtype == loss.Y.dtype == jnp.float64
    z = np.array([[0.5, -1.0]])
    expected = np.sum((z @ X - 1.0) ** 2) / 6
    assert abs(float(loss(jnp.asarray(z))) - expected) <= RTOL * expected


def test_matrix_sensing_loss_and_gradient_match_the_defining_sums():
    A, y, z = sensing_problem()
    m = len(y)
    loss = nf.MatrixSensing(A, y)
    residual = [np.trace(A[i].T @ z) - y[i] for i in range(m)]
    expected_loss = sum(r**2 for r in residual) / (2 * m)
    expected_grad = sum(r * A[i] for i, r in enumerate(residual)) / m
    value, grad = jax.value_and_grad(loss)(jnp.asarray(z))
    assert rel(value, expected_loss) <= RTOL
    assert rel(grad, expected_grad) <= RTOL

    def direct(z):  # autodiff of an explicit sum over the measurements
        return sum((jnp.sum(A[i] * z) - y[i]) ** 2 for i in range(m)) / (2 * m)

    assert rel(grad, jax.grad(direct)(jnp.asarray(z))) <= RTOL


def test_matrix_completion_matches_dense_mask_formula_and_sensing_with_indicators():
    rows, cols, values, z = completion_problem()
    m = len(values)
    loss = nf.MatrixCompletion(rows, cols, values, z.shape)
    mask, target = np.zeros(z.shape), np.zeros(z.shape)
    mask[rows, cols], target[rows, cols] = 1.0, values
    expected_loss = np.sum((mask * (z - target)) ** 2) / (2 * m)
    expected_grad = mask * (z - target) / m
    value, grad = jax.value_and_grad(loss)(jnp.asarray(z))
    assert rel(value, expected_loss) <= RTOL
    assert rel(grad, expected_grad) <= RTOL
    # Completion is sensing with indicator matrices A_k = e_{r_k} e_{c_k}ᵀ.
    A = np.zeros((m, *z.shape))
    A[np.arange(m), rows, cols] = 1.0
    dense = jax.value_and_grad(nf.MatrixSensing(A, values))(jnp.asarray(z))
    assert rel(value, dense[0]) <= RTOL and rel(grad, dense[1]) <= RTOL
    # The stored order is row-major; the loss does not depend on the order given.
    assert np.all(np.diff(np.asarray(loss.rows) * z.shape[1] + np.asarray(loss.cols)) > 0)
    perm = np.random.default_rng(1).permutation(m)
    shape = np.array(z.shape)  # any sequence of two ints
    shuffled = nf.MatrixCompletion(list(rows[perm]), cols[perm], values[perm], shape)
    assert rel(shuffled(jnp.asarray(z)), value) <= RTOL


@pytest.mark.parametrize(
    "rows, cols, values, shape, error, match",
    [
        ([0, 4], [0, 1], [1.0, 2.0], (4, 5), ValueError, r"rows\[1\] = 4 is outside \[0, 4\)"),
        ([0, 1], [0, -1], [1.0, 2.0], (4, 5), ValueError, r"cols\[1\] = -1 .*not wrapped"),
        ([2, 0, 2], [3, 1, 3], [1.0, 2.0, 3.0], (4, 5), ValueError, r"\(2, 3\) is observed more"),
        ([0.0, 1.0], [0, 1], [1.0, 2.0], (4, 5), TypeError, "rows must be an integer array"),
        ([0, 1], [True, False], [1.0, 2.0], (4, 5), TypeError, "cols must be an integer"),
        ([], [], [], (4, 5), ValueError, r"no observed entries \(m = \|Ω\| = 0\)"),
        ([0, 1], [0, 1], [1.0], (4, 5), ValueError, "1-D arrays of one length"),
        ([0, 1], [0, 1], [1.0, np.nan], (4, 5), ValueError, "values holds 1 non-finite"),
        ([0, 1], [0, 1], [1.0, 1j], (4, 5), TypeError, "values must be real"),
        ([0, 1], [0, 1], [1.0, 2.0], (4, 0), ValueError, "pair of positive ints"),
        ([0, 1], [0, 1], [1.0, 2.0], (4.0, 5), ValueError, "pair of positive ints"),
        ([0, 1], [0, 1], [1.0, 2.0], 4, ValueError, "pair of positive ints"),
    ],
)
def test_matrix_completion_refuses_bad_observations(rows, cols, values, shape, error, match):
    rows, cols = (np.asarray(i) if len(i) else np.zeros(0, int) for i in (rows, cols))
    with pytest.raises(error, match="MatrixCompletion: .*" + match):
        nf.MatrixCompletion(rows, cols, np.asarray(values), shape)


def test_matrix_sensing_refuses_bad_data():
    A, y, z = sensing_problem()
    with pytest.raises(ValueError, match=r"MatrixSensing: A must have shape \(m, n_out, n_in\)"):
        nf.MatrixSensing(A[0], y)
    with pytest.raises(ValueError, match="holds 7 measurement matrices but y holds 6"):
        nf.MatrixSensing(A, y[:6])
    with pytest.raises(ValueError, match="m ≥ 1 measurements"):
        nf.MatrixSensing(A[:0], y[:0])
    bad = A.copy()
    bad[3, 1, 2] = np.inf
    with pytest.raises(ValueError, match=r"MatrixSensing: A holds 1 non-finite.*\(3, 1, 2\)"):
        nf.MatrixSensing(bad, y)
    with pytest.raises(TypeError, match="MatrixSensing: y must be real"):
        nf.MatrixSensing(A, y + 0j)
    with pytest.raises(ValueError, match=r"MatrixSensing: z must have shape \(3, 4\)"):
        nf.MatrixSensing(np.ones((2, 3, 4)), np.ones(2))(jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"MatrixCompletion: z must have shape \(4, 5\)"):
        nf.MatrixCompletion([0], [0], [1.0], (4, 5))(jnp.ones((5, 4)))


def test_new_data_of_the_same_shapes_does_not_recompile():
    value = jax.jit(lambda loss, z: loss(z))
    for seed in range(3):
        A, y, z = sensing_problem(seed=seed)
        rows, cols, values, zc = completion_problem(seed=seed)
        sensing = nf.MatrixSensing(A, y)
        completion = nf.MatrixCompletion(rows, cols, values, zc.shape)
        assert rel(value(sensing, jnp.asarray(z)), sensing(jnp.asarray(z))) <= RTOL
        assert rel(value(completion, jnp.asarray(zc)), completion(jnp.asarray(zc))) <= RTOL
    assert value._cache_size() == 2  # one trace per loss type, not per data set


def test_matrix_completion_built_from_traced_indices_checks_ranges_when_evaluated():
    rows, cols, values, z = completion_problem()
    expected = nf.MatrixCompletion(rows, cols, values, z.shape)(jnp.asarray(z))

    @jax.jit
    def value(rows, cols):
        return nf.MatrixCompletion(rows, cols, values, z.shape)(jnp.asarray(z))

    assert rel(value(rows, cols), expected) <= RTOL
    with pytest.raises(Exception, match="an observed index lies outside shape"):
        value(rows, np.where(np.arange(len(cols)) == 2, 5, cols))


def test_completion_at_n_1000_forms_no_matrix_beyond_z_and_its_gradient():
    """n = 1000, |Ω| = 10⁵: the gradient is a scatter of the 10⁵ residuals. A dense
    operator would be |Ω|·n² = 10¹¹ entries; we check that no intermediate of the jaxpr is
    larger than n², that only the zero matrix scattered into and the gradient have that
    size, and that XLA's compiled temporaries stay below one n × n matrix."""
    n, m = 1000, 100_000
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(rng.choice(n * n, m, replace=False), n)
    loss = nf.MatrixCompletion(rows, cols, rng.normal(size=m), (n, n))
    z = jnp.zeros((n, n))
    value_and_grad = jax.value_and_grad(lambda loss, z: loss(z), argnums=1)
    jaxpr = jax.make_jaxpr(value_and_grad)(loss, z).jaxpr
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars]
    assert max(sizes) == n * n
    assert sum(s >= n * n for s in sizes) == 2  # zeros(n, n) and the scatter-add into it
    stats = jax.jit(value_and_grad).lower(loss, z).compile().memory_analysis()
    if stats is not None:  # not every backend reports it
        assert stats.temp_size_in_bytes < n * n * z.dtype.itemsize
        assert stats.output_size_in_bytes < 2 * n * n * z.dtype.itemsize
