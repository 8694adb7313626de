"""Input checks shared by the whole package: one home for validating what users pass.

Checks run on the host before any solve when values are concrete; traced values are
checked inside the computation (a named result, or `eqx.error_if`) by the functions
that need it.
"""

import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np


# Round-off tolerance on the end points of a save grid, in units in the last place of
# max(|t0|, |t1|): `jnp.geomspace(1e-3, 3e6, 30)[-1]` overshoots 3e6 by 1.4 ulp.
TIME_ULPS = 64
# Below this multiple of the machine epsilon an `rtol` cannot be met (the local error
# estimate is itself rounding noise): float32 gets a warning.
_RTOL_EPS_FLOOR = 10


def is_concrete(x) -> bool:
    """Whether `x` is a concrete value (not a tracer inside `jit`, `grad` or `vmap`)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, arrays) -> None:
    """Raise a `ValueError` naming `name` if a concrete array holds NaN or inf."""
    for i, a in enumerate(jax.tree.leaves(arrays)):
        if is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"{name}: entry {i} holds non-finite values (NaN or inf).")


def check_real(name: str, arrays) -> None:
    """Raise a `TypeError` naming `name` if an array leaf is complex (flows are real)."""
    for i, a in enumerate(jax.tree.leaves(arrays)):
        if jnp.iscomplexobj(a):
            raise TypeError(
                f"{name}: entry {i} is complex ({jnp.asarray(a).dtype}); training flows "
                "are real gradient flows. Pass the real and imaginary parts as separate "
                "real parameters."
            )


def _scalar(fname: str, name: str, x) -> float | None:
    """The value of a concrete real scalar, `None` when traced."""
    if not is_concrete(x):
        return None
    a = np.asarray(x)
    if a.shape != () or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{fname}: `{name}` must be a real scalar; got {x!r}.")
    return float(a)


def check_positive(fname: str, name: str, x, *, below: float | None = None) -> None:
    """`x` finite, > 0 (and < `below` when given), or a `ValueError` naming it."""
    v = _scalar(fname, name, x)
    if v is None:
        return
    if not np.isfinite(v) or v <= 0 or (below is not None and v >= below):
        bound = f" and below {below:g}" if below is not None else ""
        raise ValueError(f"{fname}: `{name}` must be positive and finite{bound}; got {v!r}.")


def check_tolerances(fname: str, rtol, atol) -> None:
    """`rtol` in (0, 1) and `atol` > 0, finite; with float32 (x64 off), one warning when
    `rtol` is below what float32 arithmetic can meet."""
    check_positive(fname, "rtol", rtol, below=1.0)
    check_positive(fname, "atol", atol)
    dtype = jnp.result_type(float)
    floor = _RTOL_EPS_FLOOR * float(jnp.finfo(dtype).eps)
    v = _scalar(fname, "rtol", rtol)
    if dtype == jnp.float32 and v is not None and v < floor:
        warnings.warn(
            f"{fname}: rtol = {v:g} is below what float32 can meet ({floor:.1e}): the "
            "solver will take many rejected steps and the result is accurate only to "
            "float32 rounding. Enable float64 with "
            "`jax.config.update('jax_enable_x64', True)` at the start of your program, "
            "or loosen rtol/atol.",
            stacklevel=3,
        )


def check_max_steps(fname: str, max_steps) -> None:
    """`max_steps` a positive Python integer (`None` would let a solve run forever)."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral):
        raise ValueError(
            f"{fname}: `max_steps` must be a positive integer (every solve is bounded); "
            f"got {max_steps!r}."
        )
    if max_steps <= 0:
        raise ValueError(f"{fname}: `max_steps` must be a positive integer; got {max_steps}.")


def check_times(fname: str, t0, t1, ts):
    """Validate `t0 < t1` (finite) and the save times `ts`; return `ts` as an array.

    `ts` must be 1-D, non-empty, finite, non-decreasing and within `[t0, t1]`; an overshoot
    of the end points by at most `TIME_ULPS` units in the last place (round-off, e.g. from
    `jnp.geomspace`) is clipped. Traced values are checked inside the solve instead.
    """
    dtype = jnp.result_type(float)
    v0, v1 = _scalar(fname, "t0", t0), _scalar(fname, "t1", t1)
    if v0 is not None and v1 is not None:
        if not (np.isfinite(v0) and np.isfinite(v1)):
            raise ValueError(f"{fname}: `t0` and `t1` must be finite; got t0={v0!r}, t1={v1!r}.")
        if not v1 > v0:
            raise ValueError(
                f"{fname}: `t1` must be greater than `t0` (flows run forward in time); "
                f"got t0={v0!r}, t1={v1!r}."
            )
    if ts is None:
        if v0 is None or v1 is None:
            return jnp.stack([jnp.asarray(t0, dtype=dtype), jnp.asarray(t1, dtype=dtype)])
        return np.array([v0, v1], dtype=dtype)
    if np.ndim(ts) != 1 or np.size(ts) == 0:
        raise ValueError(f"{fname}: `ts` must be a non-empty 1-D array of times; got {ts!r}.")
    if not is_concrete(ts):
        return jnp.asarray(ts).astype(dtype)
    ts_np = np.asarray(ts, dtype=dtype)
    if not np.all(np.isfinite(ts_np)):
        raise ValueError(f"{fname}: `ts` holds non-finite times (NaN or inf).")
    if np.any(np.diff(ts_np) < 0):
        raise ValueError(f"{fname}: `ts` must be non-decreasing.")
    if v0 is None or v1 is None:
        return ts_np
    slack = TIME_ULPS * float(np.finfo(dtype).eps) * max(abs(v0), abs(v1))
    if ts_np[0] < v0 - slack or ts_np[-1] > v1 + slack:
        raise ValueError(
            f"{fname}: `ts` must lie within [t0, t1] = [{v0!r}, {v1!r}]; got "
            f"[{ts_np[0]!r}, {ts_np[-1]!r}]."
        )
    return np.clip(ts_np, v0, v1)


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
