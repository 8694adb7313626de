"""Validation of what users pass to the model constructors and initializations.

Each function takes the name of the calling function and of the argument, so that every
message names the function, the argument, the value received and the fix. Counts (depths,
widths, grid sizes) must be concrete integers: they set array shapes. Real scalars and
arrays are checked on the host when concrete; a traced scalar is guarded inside the
computation with `eqx.error_if` (same message).
"""

import numbers
from collections.abc import Sequence
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import is_concrete


CountLike: TypeAlias = Any
"""A count (depth, width, number of cells or steps): an integer (Python, NumPy or concrete
JAX), validated by `as_count` so that anything else gets a message naming the argument."""
ScaleLike: TypeAlias = Any
"""A real scale (standard deviation, size, tolerance), validated by `as_scale`."""
WidthsLike: TypeAlias = Sequence[CountLike] | Any
"""A width chain (n_0, ..., n_L), validated by `as_widths`."""


def as_count(fname: str, argname: str, value, minimum: int = 1) -> int:
    """`value` as a Python `int` ≥ `minimum`.

    Accepts Python, NumPy and (concrete, 0-d) JAX integers. Refuses `bool`, floats (also
    integral ones such as `3.0`: a count given as a float is usually a bug upstream, e.g. a
    truncated division), traced values and anything else, with a `ValueError` (a `TypeError`
    for non-numbers) naming `fname`, `argname` and the value.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{fname}: `{argname}` must be an integer ≥ {minimum}; got {value!r}.")
    if isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, jax.core.Tracer):
        if value.ndim == 0 and jnp.issubdtype(value.dtype, jnp.integer):
            value = int(value)
    elif isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{fname}: `{argname}` must be a concrete integer (it sets array shapes); got a "
            "traced value. Pass it as a static Python int (outside `jit`/`vmap`)."
        )
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = int(value)
    elif isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
        raise ValueError(
            f"{fname}: `{argname}` must be an integer ≥ {minimum}; got {value!r} "
            f"({type(value).__name__}). Counts are not rounded: pass an int."
        )
    else:
        raise TypeError(
            f"{fname}: `{argname}` must be an integer ≥ {minimum}; got {type(value).__name__} "
            f"{value!r}."
        )
    if value < minimum:
        raise ValueError(f"{fname}: `{argname}` must be an integer ≥ {minimum}; got {value}.")
    return value


def as_widths(fname: str, widths) -> tuple[int, ...]:
    """The width chain $(n_0, \\dots, n_L)$: at least two integers ≥ 1 (see `as_count`)."""
    if isinstance(widths, (jax.Array, np.ndarray)):
        widths = list(widths) if widths.ndim == 1 else widths
    if isinstance(widths, (str, bytes)) or not isinstance(widths, (Sequence, list)):
        raise TypeError(
            f"{fname}: `widths` must be a sequence of ints (n_0, ..., n_L); got "
            f"{type(widths).__name__} {widths!r}."
        )
    if len(widths) < 2:
        raise ValueError(
            f"{fname}: `widths` must hold at least two positive ints (n_0, ..., n_L); got "
            f"{tuple(widths)}."
        )
    return tuple(as_count(fname, f"widths[{i}]", n) for i, n in enumerate(widths))


def as_scale(fname: str, argname: str, value, *, allow_zero: bool = False, static: bool = False):
    """A real scale: positive (or ≥ 0 with `allow_zero`) and finite.

    A concrete value is checked here and returned as a `float`; a traced one is refused if
    `static` (a setting decided on the host), else returned guarded by `eqx.error_if` with
    the same message.
    """
    bound = "≥ 0" if allow_zero else "> 0"
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Real, np.ndarray, jax.Array)
    ):
        raise TypeError(
            f"{fname}: `{argname}` must be a real number {bound}; got {type(value).__name__} "
            f"{value!r}."
        )
    if jnp.ndim(value) != 0 or not jnp.issubdtype(jnp.result_type(value), jnp.number):
        raise ValueError(f"{fname}: `{argname}` must be a real scalar {bound}; got {value!r}.")
    if jnp.issubdtype(jnp.result_type(value), jnp.complexfloating):
        raise TypeError(f"{fname}: `{argname}` must be real; got the complex {value!r}.")
    message = f"{fname}: `{argname}` must be finite and {bound}"
    if not is_concrete(value):
        if static:
            raise ValueError(
                f"{fname}: `{argname}` must be a concrete number (a static setting); got a "
                "traced value. Pass it outside `jit`/`vmap`."
            )
        value = jnp.asarray(value)
        bad = ~jnp.isfinite(value) | ((value < 0) if allow_zero else (value <= 0))
        return eqx.error_if(value, bad, message + ".")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{message}; got {value}.")
    return value


def as_float_dtype(fname: str, dtype):
    """`dtype` (default: JAX's default float) if it is a real floating dtype."""
    if dtype is None:
        return jnp.result_type(float)
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{fname}: `dtype` must be a real floating dtype; got {dtype!r}.")
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"{fname}: `dtype` must be a real floating dtype (e.g. jnp.float64); got {dt}."
        )
    return dt


_NDIM_NAMES = {0: "a scalar", 1: "a vector", 2: "a matrix", 3: "a stack of matrices"}


def as_real_array(fname: str, argname: str, value, ndim: int | None = None) -> jax.Array:
    """`value` as a non-empty, real floating JAX array (of `ndim` axes if given), finite if
    concrete. Integer, boolean and complex arrays are refused (cast with `.astype(float)`
    on purpose), as are `None`, strings and ragged nestings."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(
            f"{fname}: `{argname}` must be a real floating array; got {type(value).__name__}."
        )
    try:
        array = jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{fname}: `{argname}` must be a real floating array; could not convert "
            f"{type(value).__name__}: {err}"
        ) from None
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"{fname}: `{argname}` must be {_NDIM_NAMES.get(ndim, f'{ndim}-D')} ({ndim} axes); "
            f"got shape {array.shape}."
        )
    if not jnp.issubdtype(array.dtype, jnp.floating):
        kind = "complex" if jnp.issubdtype(array.dtype, jnp.complexfloating) else "non-floating"
        raise TypeError(
            f"{fname}: `{argname}` must have a real floating dtype; got the {kind} dtype "
            f"{array.dtype}. Cast it on purpose (e.g. `.astype(float)`); complex weights are "
            "not supported."
        )
    if array.size == 0:
        raise ValueError(f"{fname}: `{argname}` is empty (shape {array.shape}).")
    if is_concrete(array) and not np.all(np.isfinite(np.asarray(array))):
        raise ValueError(f"{fname}: `{argname}` holds non-finite values (NaN or inf).")
    return array
