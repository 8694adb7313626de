r"""Losses of the lifted variable: least squares, matrix sensing and matrix completion.

Each loss is an `eqx.Module`: its data are array leaves, so a jitted flow called with a
new loss of the same shapes does not recompile. Constructors check shapes, dtypes (real
floating; integers are cast, complex is refused) and finiteness before any solve.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import as_real_data, is_concrete


def _check_z(owner: str, z, shape: tuple[int, ...], fix: str) -> Array:
    z = jnp.asarray(z)
    if z.shape != shape:
        raise ValueError(f"{owner}: z must have shape {shape} {fix}; got {z.shape}.")
    return z


def _common_dtype(*arrays):
    """The arrays cast to their promoted dtype (explicitly, so strict promotion holds)."""
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.promote_types(arrays[0].dtype, arrays[-1].dtype)
    return tuple(a.astype(dtype) for a in arrays)


class LeastSquares(eqx.Module):
    r"""The least-squares loss $\ell(z) = \frac{1}{2N} \| z X - Y \|_F^2$.

    $X \in \mathbb{R}^{n_0 \times N}$ holds the $N \ge 1$ inputs as columns and
    $Y \in \mathbb{R}^{n_L \times N}$ the targets. Its gradient is
    $\nabla \ell(z) = (zX - Y) X^\top / N$. Any callable `z ↦ scalar` can be used as a loss
    instead; this one is an `eqx.Module`, so new data does not trigger recompilation.

    **Arguments:** `X`, `Y`: real arrays with the same number $N \ge 1$ of columns, finite
    when concrete (integers are cast to floating point; mixed precisions are promoted).

    **Raises:** `ValueError` for wrong shapes, $N = 0$ or non-finite data; `TypeError`
    for complex or non-numeric data.
    """

    X: Float[Array, "inp N"]
    Y: Float[Array, "out N"]

    def __init__(self, X, Y):
        X = as_real_data("LeastSquares", "X", X)
        Y = as_real_data("LeastSquares", "Y", Y)
        if X.ndim != 2 or Y.ndim != 2:
            raise ValueError(
                f"LeastSquares: X and Y must be matrices; got shapes {X.shape} and {Y.shape}."
            )
        if X.shape[1] != Y.shape[1]:
            raise ValueError(
                "LeastSquares: X and Y must have the same number of columns (examples); "
                f"got {X.shape[1]} and {Y.shape[1]}."
            )
        if X.shape[1] == 0:
            raise ValueError(
                f"LeastSquares: X {X.shape} and Y {Y.shape} hold N = 0 examples, so the "
                "loss ‖zX − Y‖²/(2N) is undefined. Pass at least one example (one column "
                "of X and of Y)."
            )
        self.X, self.Y = _common_dtype(X, Y)

    def __call__(self, z: Float[Array, "..."]) -> Float[Array, ""]:
        shape = (self.Y.shape[0], self.X.shape[0])
        z = _check_z("LeastSquares", z, shape, f"to multiply X {self.X.shape} and match Y")
        residual = z @ self.X - self.Y
        return jnp.sum(residual**2) / (2 * self.X.shape[1])


class MatrixSensing(eqx.Module):
    r"""The matrix-sensing loss
    $\ell(z) = \frac{1}{2m} \sum_{i=1}^m \big(\langle A_i, z \rangle - y_i\big)^2$,
    $\langle A, z \rangle = \operatorname{tr}(A^\top z)$.

    Its gradient is $\nabla \ell(z) = \frac1m \sum_i (\langle A_i, z\rangle - y_i) A_i$,
    computed as one matrix–vector product with the $m \times (n_{out} n_{in})$ matrix of
    the flattened $A_i$ (the data themselves; nothing larger is formed). With Gaussian
    $A_i$ this is the sensing model of Gunasekar et al. (2017) and Arora et al. (2019).

    **Arguments:**

    - `A`: the $m \ge 1$ measurement matrices, shape `(m, n_out, n_in)`.
    - `y`: the measurements, shape `(m,)`.

    Both real and finite when concrete (integers are cast to floating point).

    **Raises:** `ValueError` for wrong shapes, $m = 0$ or non-finite data; `TypeError`
    for complex or non-numeric data.
    """

    A: Float[Array, "m out inp"]
    y: Float[Array, " m"]

    def __init__(self, A, y):
        A = as_real_data("MatrixSensing", "A", A)
        y = as_real_data("MatrixSensing", "y", y)
        if A.ndim != 3 or y.ndim != 1:
            raise ValueError(
                "MatrixSensing: A must have shape (m, n_out, n_in) and y shape (m,); got "
                f"{A.shape} and {y.shape}."
            )
        if A.shape[0] != y.shape[0]:
            raise ValueError(
                f"MatrixSensing: A holds {A.shape[0]} measurement matrices but y holds "
                f"{y.shape[0]} measurements; pass one y_i per A_i."
            )
        if min(A.shape) == 0:
            raise ValueError(
                f"MatrixSensing: A has shape {A.shape}; it needs m ≥ 1 measurements of a "
                "matrix with n_out, n_in ≥ 1 (the loss divides by m)."
            )
        self.A, self.y = _common_dtype(A, y)

    def __call__(self, z: Float[Array, "..."]) -> Float[Array, ""]:
        m = self.A.shape[0]
        z = _check_z("MatrixSensing", z, self.A.shape[1:], f"to match A {self.A.shape}")
        residual = self.A.reshape(m, -1) @ z.reshape(-1) - self.y
        return jnp.sum(residual**2) / (2 * m)


def _index_array(name: str, idx) -> np.ndarray | Array:
    if not hasattr(idx, "dtype"):
        idx = np.asarray(idx)
    dtype = idx.dtype
    if not jnp.issubdtype(dtype, np.integer) or dtype == np.bool_:
        raise TypeError(
            f"MatrixCompletion: {name} must be an integer array of indices; got dtype "
            f"{dtype}. Pass integer indices (e.g. `{name}.astype(int)`)."
        )
    return np.asarray(idx) if is_concrete(idx) else idx


def _check_indices(rows, cols, shape) -> np.ndarray:
    """Range and duplicate checks on the host; returns the row-major permutation."""
    for name, idx, n in (("rows", rows, shape[0]), ("cols", cols, shape[1])):
        bad = (idx < 0) | (idx >= n)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(
                f"MatrixCompletion: {name}[{k}] = {int(idx[k])} is outside [0, {n}) for "
                f"shape {shape}; negative indices are not wrapped around. Pass indices "
                f"0 ≤ {name} < {n}."
            )
    order = np.lexsort((cols, rows))
    r, c = rows[order], cols[order]
    dup = (r[1:] == r[:-1]) & (c[1:] == c[:-1])
    if dup.any():
        k = int(np.argmax(dup))
        raise ValueError(
            f"MatrixCompletion: entry ({int(r[k])}, {int(c[k])}) is observed more than "
            f"once ({int(dup.sum())} duplicate observation(s) in all); Ω is a set of "
            "entries. Keep one value per entry (e.g. the mean of its observations)."
        )
    return order


class MatrixCompletion(eqx.Module):
    r"""The matrix-completion loss
    $\ell(z) = \frac{1}{2|\Omega|} \sum_{(i,j) \in \Omega} (z_{ij} - y_{ij})^2$.

    The observed entries are gathered from $z$, so the loss costs $O(|\Omega|)$ and its
    gradient $\nabla \ell(z) = P_\Omega(z - y) / |\Omega|$ is a scatter-add of the
    $|\Omega|$ residuals into a zero matrix (the transpose of the gather): no dense
    $|\Omega| \times n_{out} n_{in}$ operator, and no matrix of the size of $z$ other
    than the gradient itself.

    **Arguments:**

    - `rows`, `cols`: integer arrays of shape `(m,)`, the observed entries
      $\Omega = \{(\text{rows}_k, \text{cols}_k)\}$, $m = |\Omega| \ge 1$, with
      $0 \le \text{rows} < n_{out}$ and $0 \le \text{cols} < n_{in}$ (negative indices
      are refused, not wrapped around).
    - `values`: the observed values $y_{ij}$, real and finite, shape `(m,)`.
    - `shape`: `(n_out, n_in)`, the shape of $z$.

    **Duplicates:** $\Omega$ is a set. An entry given twice is refused with a
    `ValueError` (average its observations first). Concrete observations are stored
    in row-major order, so `rows`, `cols` and `values` may come back permuted.
    Inside `jit` (traced indices) the ranges are checked with `eqx.error_if` when the
    loss is evaluated; duplicates cannot be checked there and count as repeated
    observations.

    **Raises:** `ValueError` for wrong shapes, $m = 0$, out-of-range or duplicate
    indices, non-finite values; `TypeError` for non-integer indices or complex values.
    """

    rows: Int[Array, " m"]
    cols: Int[Array, " m"]
    values: Float[Array, " m"]
    shape: tuple[int, int] = eqx.field(static=True)
    checked: bool = eqx.field(static=True)

    def __init__(self, rows, cols, values, shape):
        if (
            not isinstance(shape, tuple | list | np.ndarray)
            or np.ndim(shape) != 1
            or len(shape) != 2
            or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) for n in shape)
            or min(shape) < 1
        ):
            raise ValueError(
                f"MatrixCompletion: shape must be a pair of positive ints (n_out, n_in); "
                f"got {shape!r}."
            )
        shape = (int(shape[0]), int(shape[1]))
        rows, cols = _index_array("rows", rows), _index_array("cols", cols)
        values = as_real_data("MatrixCompletion", "values", values)
        if rows.ndim != 1 or rows.shape != cols.shape or rows.shape != values.shape:
            raise ValueError(
                "MatrixCompletion: rows, cols and values must be 1-D arrays of one length "
                f"m = |Ω|; got shapes {rows.shape}, {cols.shape} and {values.shape}."
            )
        if rows.shape[0] == 0:
            raise ValueError(
                "MatrixCompletion: no observed entries (m = |Ω| = 0), so the loss "
                "Σ(z_ij − y_ij)²/(2|Ω|) is undefined. Pass at least one observation."
            )
        self.checked = all(is_concrete(a) for a in (rows, cols, values))
        if self.checked:
            order = _check_indices(rows, cols, shape)
            rows, cols, values = rows[order], cols[order], values[order]
        self.rows = jnp.asarray(rows, dtype=jnp.int32)
        self.cols = jnp.asarray(cols, dtype=jnp.int32)
        self.values, self.shape = values, shape

    def __call__(self, z: Float[Array, "..."]) -> Float[Array, ""]:
        z = _check_z("MatrixCompletion", z, self.shape, "(the `shape` it was built with)")
        rows, cols = self.rows, self.cols
        if not self.checked:
            outside = (rows < 0) | (rows >= self.shape[0]) | (cols < 0) | (cols >= self.shape[1])
            msg = f"MatrixCompletion: an observed index lies outside shape {self.shape}."
            rows = eqx.error_if(rows, outside, msg)
        observed = z.at[rows, cols].get(
            mode="promise_in_bounds",
            indices_are_sorted=self.checked,
            unique_indices=self.checked,
            wrap_negative_indices=False,
        )
        return jnp.sum((observed - self.values) ** 2) / (2 * self.values.shape[0])
