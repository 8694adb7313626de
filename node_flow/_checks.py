"""Input checks shared by the whole package: one home for validating what users pass.

Checks run on the host before any solve when values are concrete; traced values are
checked inside the computation with `eqx.error_if` by the functions that need it.
"""

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """Whether `x` is a concrete value (not a tracer inside `jit`, `grad` or `vmap`)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, arrays) -> None:
    """Raise a `ValueError` naming `name` if a concrete array holds NaN or inf."""
    for i, a in enumerate(jax.tree.leaves(arrays)):
        if is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"{name}: entry {i} holds non-finite values (NaN or inf).")


def as_real_data(owner: str, name: str, x, fix: str = ""):
    """`x` as a real floating JAX array for the data of `owner` (a loss, a dataset).

    Integer and boolean arrays are cast to the default floating dtype; complex and
    non-numeric arrays are refused with a `TypeError`, and a concrete array holding NaN
    or inf with a `ValueError` that counts the bad entries and gives the first one.
    Traced arrays (inside `jit`) are only checked for their dtype.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        x = np.asarray(x)
        dtype = x.dtype
    if jnp.issubdtype(dtype, np.complexfloating):
        raise TypeError(
            f"{owner}: {name} must be real; got a complex array of dtype {dtype}. "
            "Split it into real and imaginary parts (the losses are real least squares)."
        )
    if not jnp.issubdtype(dtype, np.number) and dtype != np.bool_:
        raise TypeError(f"{owner}: {name} must be a numeric array; got dtype {dtype}.")
    if not jnp.issubdtype(dtype, np.floating):
        x = jnp.asarray(x, dtype=float)
    x = jnp.asarray(x)
    if is_concrete(x):
        bad = ~np.isfinite(np.asarray(x))
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{owner}: {name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), "
                f"the first at index {first}. {fix or 'Drop or impute them.'}"
            )
    return x
