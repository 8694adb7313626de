"""Input checks shared by the whole package: one home for validating what users pass.

Checks run on the host before any solve when values are concrete; traced values are
checked inside the computation with `eqx.error_if` by the functions that need it.
"""

import jax
import numpy as np


def is_concrete(x) -> bool:
    """Whether `x` is a concrete value (not a tracer inside `jit`, `grad` or `vmap`)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, arrays) -> None:
    """Raise a `ValueError` naming `name` if a concrete array holds NaN or inf."""
    for i, a in enumerate(jax.tree.leaves(arrays)):
        if is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"{name}: entry {i} holds non-finite values (NaN or inf).")
