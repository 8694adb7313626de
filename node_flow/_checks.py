"""Input checks shared by the whole package: one home for validating what users pass.

Checks run on the host before any solve when values are concrete; traced values are
checked inside the computation (a named result, or `guard`: `eqx.error_if`, or NaN
inside a flow) by the functions that need it.
"""

import contextlib
import contextvars
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, TypeAlias

import equinox as eqx
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


_TRACING_A_FLOW = contextvars.ContextVar("node_flow_tracing_a_flow", default=False)


@contextlib.contextmanager
def tracing_a_flow():
    """Entered by the flow core while it traces a solve: inside, `guard` marks a failed
    check with NaN instead of raising (trace time only; it changes no traced value)."""
    token = _TRACING_A_FLOW.set(True)
    try:
        yield
    finally:
        _TRACING_A_FLOW.reset(token)


def guard(x, bad, message: str):
    """A check of traced values: `x` guarded by `eqx.error_if(x, bad, message)`, except
    inside a flow (`tracing_a_flow`), where `x` becomes NaN where `bad` holds. There the
    flow reports the failure in its result (its state or loss is not finite), as it does
    for every other non-finite step, and the solver, not the check, decides about trial
    stages it would reject; an `eqx.error_if` host callback would also keep the flow's
    program out of JAX's persistent compilation cache."""
    if _TRACING_A_FLOW.get():
        return jax.tree.map(lambda a: jnp.where(bad, jnp.nan, a), x)
    return eqx.error_if(x, bad, message)


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


def check_array_output(fname: str, what: str, fn, *args) -> jax.ShapeDtypeStruct:
    """`fn(*args)` returns one real floating array (checked by tracing, nothing runs);
    returns its shape and dtype. `what` names the function in the message."""
    try:
        out = jax.eval_shape(fn, *args)
    except TypeError as err:
        raise TypeError(
            f"{fname}: `{what}` must be a JAX function returning one floating array; "
            f"evaluating it failed with: {err}"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"{fname}: `{what}` must return one array z (a single floating array); it "
            f"returned {type(out).__name__} ({jax.tree.structure(out)}). Combine the pieces "
            "into one array, e.g. with `jnp.concatenate` or `jax.flatten_util.ravel_pytree`."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `{what}` must return a real floating array; got dtype {out.dtype} "
            "(an integer or boolean output has no derivative)."
        )
    return out


def check_model(fname: str, model) -> tuple[Any, Any]:
    """A trainable model: an `eqx.Module` with a `.lift()` returning one real floating
    array, and real, finite floating-point parameters. Returns `(params, static)`, the
    partition of `model` by `eqx.is_inexact_array`."""
    if not isinstance(model, eqx.Module) or not callable(getattr(model, "lift", None)):
        raise TypeError(f"{fname}: `model` must be an eqx.Module with a `.lift()` method.")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if not jax.tree.leaves(params):
        raise ValueError(f"{fname}: `model` has no floating-point parameters to train.")
    check_real(f"{fname}: the initial model", params)
    check_finite(f"{fname}: the initial model", params)
    check_array_output(fname, "model.lift()", _lift, model)
    return params, static


@jax.jit
def _lift(model):
    # One jitted function: a repeated check of the same model structure is answered
    # from JAX's trace cache (0.02 ms; tracing a fresh lambda on every flow call, 0.4 ms).
    return model.lift()


def check_scalar_loss(fname: str, loss, z: jax.ShapeDtypeStruct) -> None:
    """`loss` a callable returning a real floating scalar for `z` (checked by tracing)."""
    if not callable(loss):
        raise TypeError(f"{fname}: `loss` must be a callable z ↦ scalar; got {type(loss)}.")
    out = jax.eval_shape(loss, z)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise TypeError(f"{fname}: `loss` must return a scalar; it returned shape {shape}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{fname}: `loss` must return a real floating scalar; got {out.dtype}.")


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


# -- Model constructors and initializations -----------------------------------------
# Validation of what users pass to the model constructors and initializations.
#
# Each function takes the name of the calling function and of the argument, so that every
# message names the function, the argument, the value received and the fix. Counts (depths,
# widths, grid sizes) must be concrete integers: they set array shapes. Real scalars and
# arrays are checked on the host when concrete; a traced scalar is guarded inside the
# computation with `eqx.error_if` (same message).


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
    `static` (a setting decided on the host), else returned through `guard` with the same
    message.
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
        return guard(value, bad, message + ".")
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
