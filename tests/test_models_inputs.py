"""Bad inputs to the models and initializations get a clear exception naming the function,
the argument and the value, before any computation; integer-like inputs are accepted."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import node_flow as nf

from .helpers import max_abs


KEY = jax.random.key(0)
U = jnp.eye(2)


@pytest.fixture(scope="module")
def node():
    return nf.neural_ode.relaxed_balanced(KEY, 2, 4)


@pytest.mark.parametrize("s", [10.0, -0.1, 1.0 + 1e-9, np.nan, np.inf, np.array([0.5, 2.0])])
def test_at_refuses_depths_outside_the_unit_interval(node, s):
    """A(s) is defined on [0, 1]: never extrapolated (issue 12: at(10.) gave 11.05)."""
    with pytest.raises(ValueError, match=r"LinearNeuralODE.at: `s` must lie in \[0, 1\].*got s ="):
        node.at(s)


def test_at_accepts_the_end_points_and_integer_depths(node):
    """The end nodes are exact: A(0) = A_0, A(1) = A_m (hat functions interpolate)."""
    assert max_abs(node.at(0.0) - node.A[0]) == 0.0
    assert max_abs(node.at(jnp.int64(1)) - node.A[-1]) <= 1e-15


def test_traced_depths_outside_the_interval_raise_under_jit(node):
    at = eqx.filter_jit(lambda model, s: model.at(s))
    assert max_abs(at(node, 0.5) - node.at(0.5)) <= 1e-15
    with pytest.raises(Exception, match=r"`s` must lie in \[0, 1\]"):
        at(node, 10.0)
    transition = eqx.filter_jit(lambda model, s: model.transition(0.0, s))
    with pytest.raises(Exception, match=r"`s1` must lie in \[0, 1\]"):
        transition(node, 2.0)


@pytest.mark.parametrize("s0, s1, name", [(0, 2, "s1"), (-1, 0.5, "s0"), (0.2, np.nan, "s1")])
def test_transition_refuses_depths_outside_the_unit_interval(node, s0, s1, name):
    with pytest.raises(ValueError, match=rf"transition: `{name}` must lie in \[0, 1\]"):
        node.transition(s0, s1)


INTEGERS = [np.int64(4), np.int32(4), jnp.int32(4), jnp.asarray(4)]
NOT_COUNTS = [(4.5, "4.5"), (4.0, "4.0"), (0, "0"), (-3, "-3"), (True, "True")]


@pytest.mark.parametrize("L", INTEGERS)
def test_integer_like_depths_and_grids_are_accepted(node, L):
    assert max_abs(node.to_residual(L).A - node.to_residual(4).A) == 0.0
    grid = nf.neural_ode.relaxed_balanced(KEY, 2, m=L)
    assert grid.m == 4 and max_abs(grid.A - nf.neural_ode.relaxed_balanced(KEY, 2, 4).A) == 0
    assert nf.neural_ode.relaxed_balanced_residual(KEY, L, 0.5, L).depth == 4


@pytest.mark.parametrize("bad, shown", NOT_COUNTS)
def test_counts_that_are_not_positive_integers_are_refused(node, bad, shown):
    calls = {
        "to_residual: `L`": lambda: node.to_residual(bad),
        "relaxed_balanced: `m": lambda: nf.neural_ode.relaxed_balanced(KEY, 2, bad),
        "relaxed_balanced_weights: `n`": lambda: nf.neural_ode.relaxed_balanced(KEY, bad, 4),
        "relaxed_balanced_residual: `L`": lambda: nf.neural_ode.relaxed_balanced_residual(
            KEY, 2, 0.0, bad
        ),
        "LinearNeuralODE: `max_steps`": lambda: nf.LinearNeuralODE(node.A, max_steps=bad),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"{name}.*integer ≥ 1; got {shown}"):
            call()


INITS = {
    "init.gaussian": lambda widths, **kw: nf.init.gaussian(KEY, widths, **kw),
    "init.balanced": lambda widths, **kw: nf.init.balanced(KEY, widths, **kw),
    "init.relaxed_balanced": lambda widths, **kw: nf.init.relaxed_balanced(
        KEY, widths, [0.1] * (len(widths) - 2), **kw
    ),
}


@pytest.mark.parametrize("fname", list(INITS))
@pytest.mark.parametrize(
    "widths, shown",
    [
        ((3.7, 3.2, 3.9), r"`widths\[0\]` must be an integer ≥ 1; got 3.7"),
        ((3, 3.0, 3), r"`widths\[1\]` must be an integer ≥ 1; got 3.0"),
        ((3, 0, 3), r"`widths\[1\]` must be an integer ≥ 1; got 0"),
        ((3, True, 3), r"`widths\[1\]` must be an integer ≥ 1; got True"),
        ((3,), "`widths` must hold at least two positive ints"),
    ],
)
def test_widths_are_refused_not_truncated(fname, widths, shown):
    with pytest.raises(ValueError, match=rf"{fname}: {shown}"):
        INITS[fname](widths)


@pytest.mark.parametrize("fname", list(INITS))
def test_integer_like_widths_are_accepted(fname):
    ref = INITS[fname]((3, 3, 3))
    for widths in [(np.int64(3), 3, jnp.int32(3)), np.array([3, 3, 3]), [3, 3, 3]]:
        net = INITS[fname](widths)
        assert net.widths == (3, 3, 3)
        assert max_abs(net.lift() - ref.lift()) == 0.0


@pytest.mark.parametrize("fname", list(INITS))
@pytest.mark.parametrize("value", [0, 0.0, -1.0, np.nan, np.inf])
def test_scales_must_be_positive_and_finite_in_every_init(fname, value):
    """One rule: `scale` (`std` for the Gaussian init) is positive and finite. A zero scale
    would return the zero network, a critical point of every loss."""
    arg = "std" if fname == "init.gaussian" else "scale"
    with pytest.raises(ValueError, match=rf"{fname}: `{arg}` must be finite and > 0; got"):
        INITS[fname]((3, 3, 3), **{arg: value})


@pytest.mark.parametrize("fname", list(INITS))
def test_init_refuses_non_float_dtypes(fname):
    for dtype in (jnp.int32, jnp.complex128):
        with pytest.raises(TypeError, match=rf"{fname}: `dtype` must be a real floating"):
            INITS[fname]((3, 3, 3), dtype=dtype)
    assert INITS[fname]((3, 3, 3), dtype=jnp.float32).weights[0].dtype == jnp.float32


def test_relaxed_balanced_init_refuses_bad_lambdas():
    with pytest.raises(TypeError, match="`lambdas` must be real"):
        nf.init.relaxed_balanced(KEY, (3, 3, 3), [0.1j])
    with pytest.raises(ValueError, match="`lambdas` must be 1-D"):
        nf.init.relaxed_balanced(KEY, (3, 3, 3, 3), [[0.1, 0.2]])
    with pytest.raises(TypeError, match="real numbers"):
        nf.init.relaxed_balanced(KEY, (3, 3, 3), ["a"])


BAD_MATRICES = [
    (None, TypeError, "must be a real floating array; got NoneType"),
    ("U", TypeError, "must be a real floating array; got str"),
    (jnp.eye(2, dtype=jnp.complex128), TypeError, "complex dtype complex128"),
    (jnp.eye(2, dtype=jnp.int32), TypeError, "non-floating dtype int32"),
    (jnp.ones((0, 2)), ValueError, r"is empty \(shape \(0, 2\)\)"),
    (jnp.full((2, 2), jnp.nan), ValueError, "non-finite"),
    (jnp.full((2, 2), jnp.inf), ValueError, "non-finite"),
    (jnp.ones(2), ValueError, r"must be a matrix \(2 axes\); got shape \(2,\)"),
]


@pytest.mark.parametrize("bad, error, match", BAD_MATRICES)
def test_linear_network_names_the_bad_factor(bad, error, match):
    """`LinearNetwork((U, None))` names `weights[1] (U_2)` (issue 12: it spoke of jnp.array)."""
    with pytest.raises(error, match=rf"LinearNetwork: `weights\[1\] \(U_2\)` .*{match}"):
        nf.LinearNetwork((U, bad))


def test_linear_network_refuses_mixed_dtypes_and_a_bare_matrix():
    with pytest.raises(TypeError, match="mix dtypes"):
        nf.LinearNetwork((U, U.astype(jnp.float32)))
    with pytest.raises(TypeError, match=r"a single matrix U is the network \(U,\)"):
        nf.LinearNetwork(U)


STACKS = [
    (jnp.ones((3, 2, 2), dtype=jnp.complex128), TypeError, "complex"),
    (jnp.ones((3, 2, 2), dtype=jnp.int32), TypeError, "non-floating"),
    (jnp.ones((3, 0, 0)), ValueError, "empty"),
    (jnp.ones((0, 2, 2)), ValueError, "empty"),
    (jnp.ones((3, 2, 2)).at[1, 0, 0].set(jnp.nan), ValueError, "non-finite"),
    (jnp.ones((2, 2)), ValueError, "stack of matrices"),
    (jnp.ones((3, 2, 3)), ValueError, "square"),
]


@pytest.mark.parametrize("bad, error, match", STACKS)
@pytest.mark.parametrize("model", [nf.ResidualLinearNetwork, nf.LinearNeuralODE])
def test_stacked_models_refuse_bad_weight_stacks(model, bad, error, match):
    with pytest.raises(error, match=rf"{model.__name__}: .*{match}"):
        model(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rtol=0.0), "`rtol` must be finite and > 0"),
        (dict(atol=np.nan), "`atol` must be finite and > 0"),
        (dict(rtol=2.0), "`rtol` must be < 1"),
        (dict(solver="tsit5"), "solver"),
        (dict(adjoint=diffrax.Tsit5()), "adjoint"),
        (
            dict(stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6), rtol=1e-6),
            "either `stepsize_controller` or `rtol`/`atol`",
        ),
        (
            dict(stepsize_controller=diffrax.PIDController(rtol=jnp.asarray(1e-6), atol=1e-6)),
            "must be hashable",
        ),
        (dict(interpolation="cubic"), "`interpolation` must be one of"),
        (dict(dt0=-0.1), "`dt0` must be finite and > 0"),
    ],
)
def test_neural_ode_refuses_bad_solver_settings(node, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=f"(?s)LinearNeuralODE.*{match}"):
        nf.LinearNeuralODE(node.A, **kwargs)


def test_relaxed_balanced_weights_refuse_bad_inputs():
    with pytest.raises(ValueError, match="RelaxedBalancedWeights: `K` holds non-finite"):
        nf.neural_ode.RelaxedBalancedWeights(jnp.full((2, 2), jnp.nan), jnp.eye(2), 0.0)
    with pytest.raises(TypeError, match="`lam` must be a real constant or a JAX function"):
        nf.neural_ode.relaxed_balanced(KEY, 2, 4, "zero")
    with pytest.raises(ValueError, match="not finite"):
        nf.neural_ode.relaxed_balanced(KEY, 2, 4, np.nan)
    with pytest.raises(ValueError, match="`scale` must be finite and > 0; got 0.0"):
        nf.neural_ode.relaxed_balanced(KEY, 2, 4, scale=0.0)
    with pytest.raises(ValueError, match="`skew` must be finite and ≥ 0; got -1.0"):
        nf.neural_ode.relaxed_balanced(KEY, 2, 4, skew=-1.0)
    assert nf.neural_ode.relaxed_balanced_weights(KEY, 2, skew=0.0).K.sum() == 0.0
