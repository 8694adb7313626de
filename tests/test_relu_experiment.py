"""`experiments/relu_intrinsic.py`: the large case is part of the default run, and its
gradient-descent comparison (through `node_flow.gradient_descent`) is plain gradient
descent on the ReLU network, checked against a NumPy loop with hand-written gradients."""

import importlib
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import node_flow.relu as relu


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        yield importlib.import_module("relu_intrinsic")
    finally:
        sys.path.remove(str(EXPERIMENTS))


def test_relu_experiment_runs_the_large_case_unless_no_large(script, tmp_path):
    assert script.parse_args(["--out", str(tmp_path)]).large is True
    assert script.parse_args(["--out", str(tmp_path), "--no-large"]).large is False


def test_relu_experiment_descent_is_gradient_descent_on_the_network(script):
    """Five steps of η = 0.1 on a 3-4-1 ReLU network (no biases) with N = 10 samples.
    NumPy: a = XWᵀ, r = (relu(a)Uᵀ − Y)/N, ∇_U = rᵀ relu(a), ∇_W = ((rU) ⊙ [a > 0])ᵀ X
    (ReLU'(0) = 0, as jax.nn.relu). Both routes do five steps in float64 from the same
    start; the weights are O(1), so they agree to a few ulps per step: 1e-12 relative."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(10, 3)), rng.normal(size=(10, 1))
    W, U = rng.normal(size=(4, 3)), rng.normal(size=(1, 4))
    lr, steps = 0.1, 5
    theta, loss = script.descent_end(relu.MLP([jnp.asarray(W), jnp.asarray(U)]), X, Y, lr, 0.5)
    for _ in range(steps):
        a = X @ W.T
        r = (np.maximum(a, 0) @ U.T - Y) / len(X)
        gU, gW = r.T @ np.maximum(a, 0), ((r @ U) * (a > 0)).T @ X
        W, U = W - lr * gW, U - lr * gU
    expected = np.concatenate([W.ravel(), U.ravel()])
    np.testing.assert_allclose(np.asarray(theta), expected, rtol=1e-12, atol=1e-14)
    final = np.sum((np.maximum(X @ W.T, 0) @ U.T - Y) ** 2) / (2 * len(X))
    assert abs(loss - final) <= 1e-12 * final
