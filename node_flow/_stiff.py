r"""Matrix-free implicit solvers for stiff training flows.

Once the large singular values of a deep linear network are learned, its flow is stiff:
the Jacobian of the vector field has eigenvalues of size $\sim N\sigma_1^{2-2/N}\|H\|$
(the learned modes, which an explicit solver must resolve for stability) and of size
$\sim \sigma_{\min}^{2-2/N}\|H\|$ (the small singular values, which move on time scales
$10^4$–$10^7$ times longer). An explicit Runge–Kutta step is bounded by the first, so
following the second costs millions of steps.

[`node_flow.stiff_solver`][] returns a diffrax ESDIRK solver (Kværnø's L-stable
methods) whose stage equations are solved by a *Newton–Krylov* chord iteration: the
Jacobian of the flow is linearised once per step with `jax.linearize` (the kernel's own
JVP: no $d \times d$ matrix is ever formed) and each Newton correction solves
$(I - h\gamma\,\partial f)\,\delta = r$ with restarted GMRES (lineax). Memory is a few
copies of the state per Krylov vector, whatever $d$; a Newton or Krylov failure rejects
the step, and the step-size controller shrinks it.
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, PyTree

from ._checks import CountLike, ScaleLike


def _stop_gradient(tree: PyTree) -> PyTree:
    """`lax.stop_gradient` of the array leaves only: a linearised operator also holds a
    jaxpr, which `lax.stop_gradient` refuses."""
    dynamic, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.lax.stop_gradient(dynamic), static)


class _ChordState(eqx.Module):
    jac: lx.AbstractLinearOperator
    linear_state: Any
    diffsize: Array
    diffsize_prev: Array
    result: optx.RESULTS
    step: Array


class _NoAux(eqx.Module):
    fn: Callable

    def __call__(self, y, args):
        return self.fn(y, args)[0]


class KrylovChord(optx.AbstractRootFinder):
    r"""The chord iteration $y \leftarrow y - J_0^{-1} F(y)$ with a Krylov linear solver.

    As `diffrax.VeryChord` (the same termination test: stop once the contraction rate
    $\rho$ of successive corrections gives $\|\delta\|\rho/(1-\rho) < \kappa$, fail on
    $\rho > 2$; Hairer & Wanner, *Solving ODEs II*, §IV.8), with $J_0$ linearised
    once by `jax.linearize` at the point diffrax chooses and applied matrix-free; only its
    array leaves are cut from the gradient (the linearised operator holds a jaxpr).
    """

    rtol: float
    atol: float
    norm: Callable = optx.max_norm
    kappa: float = 1e-2
    linear_solver: lx.AbstractLinearSolver = lx.GMRES(rtol=0.0, atol=1e-4, max_steps=300)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        if "init_state" in options:
            return options["init_state"]
        jac = lx.linearise(lx.JacobianLinearOperator(_NoAux(fn), y, args, tags=tags))
        linear_state = _stop_gradient(self.linear_solver.init(jac, options={}))
        dtype = jnp.result_type(*jax.tree.leaves(y))
        return _ChordState(
            jac=jac,
            linear_state=linear_state,
            diffsize=jnp.array(jnp.inf, dtype),
            diffsize_prev=jnp.array(1.0, dtype),
            result=optx.RESULTS.successful,
            step=jnp.array(0),
        )

    def step(self, fn, y, args, options, state, tags):
        fx, aux = fn(y, args)
        delta, result = self._newton_correction(state, fx)
        new_y = jax.tree.map(lambda a, b: a - b, y, delta)
        scale = jax.tree.map(lambda v: self.atol + self.rtol * jnp.abs(v), new_y)
        diffsize = self.norm(jax.tree.map(lambda d, s: d / s, delta, scale))
        new_state = _ChordState(
            jac=state.jac,
            linear_state=state.linear_state,
            diffsize=diffsize,
            diffsize_prev=state.diffsize,
            result=result,
            step=state.step + 1,
        )
        return new_y, new_state, aux

    def _newton_correction(self, state, fx):
        r"""$J_0^{-1} F$ by the Krylov solver, on $F/\|F\|_2$ and scaled back.

        lineax's GMRES stops on $|r_i| \le$ `atol` $+$ `rtol`$\,|b_i|$ *entry by entry*:
        with `atol = 0` an entry of $F$ that is zero or tiny (the ascent appended to the
        state, an unobserved entry of a completion problem) can never meet it, and GMRES
        breaks down or stagnates however small the residual is. Normalising $F$ makes
        `atol` a normwise relative residual, the one inexact Newton needs; $F = 0$ (already
        solved) gives $\delta = 0$ without a solve's verdict."""
        size = jnp.sqrt(sum(jnp.sum(jnp.abs(f) ** 2) for f in jax.tree.leaves(fx)))
        solved = size == 0
        unit = jax.tree.map(lambda f: f / jnp.where(solved, 1, size), fx)
        sol = lx.linear_solve(
            state.jac, unit, self.linear_solver, state=_stop_gradient(state.linear_state),
            throw=False,
        )  # fmt: skip
        delta = jax.tree.map(lambda d: d * size, sol.value)
        result = optx.RESULTS.where(
            solved, optx.RESULTS.successful, optx.RESULTS.promote(sol.result)
        )
        return delta, result

    def terminate(self, fn, y, args, options, state, tags):
        at_least_two = state.step >= 2
        rate = state.diffsize / state.diffsize_prev
        factor = state.diffsize * rate / (1 - rate)
        # Corrections below 100 ulps of the scaled iterate: converged to rounding.
        small = state.diffsize < 10.0 ** (2 - jnp.finfo(state.diffsize.dtype).precision)
        diverged = ~jnp.isfinite(rate) | (rate > 2)
        converged = (factor > 0) & (factor < self.kappa)
        done = at_least_two & (small | diverged | converged)
        result = optx.RESULTS.where(
            at_least_two & ~small & (diverged | ~converged),
            optx.RESULTS.nonlinear_divergence,
            optx.RESULTS.successful,
        )
        failed = state.result != optx.RESULTS.successful
        return failed | done, optx.RESULTS.where(failed, state.result, result)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


_KVAERNO = {3: diffrax.Kvaerno3, 4: diffrax.Kvaerno4, 5: diffrax.Kvaerno5}


def stiff_solver(
    order: CountLike = 5,
    *,
    krylov_rtol: ScaleLike = 1e-4,
    restart: CountLike = 30,
    krylov_max_steps: CountLike = 300,
    newton_max_steps: CountLike = 10,
) -> diffrax.AbstractImplicitSolver:
    r"""An L-stable implicit solver for stiff flows with a matrix-free Newton–Krylov step.

    Each step of Kværnø's ESDIRK method of the given `order` solves its stage equations
    $k = f(y_0 + h\sum_j a_{ij}k_j + h\gamma k)$ by the chord iteration of
    `diffrax.VeryChord` (tolerances taken from the step-size controller), with the
    linear system

    $$(I - h\gamma\,J)\,\delta = r,\qquad J = \partial f(y_0) \text{ applied by its JVP},$$

    solved by restarted GMRES to normwise relative residual `krylov_rtol` (an inexact Newton
    correction: the iteration then contracts at least by that factor per sweep). The
    Jacobian–vector products come from one `jax.linearize` of the flow per step, i.e. the
    kernel's JVP (e.g. the closed-form derivatives of [`node_flow.kernels.balanced`][]).
    Pass the result as `solver=` to [`node_flow.gradient_flow`][] or
    [`node_flow.intrinsic_flow`][]; their default PID controller adapts the step.

    Use it for flows that run long after convergence (stiffness ratios of $10^4$ and
    more); on the non-stiff plateau before learning an explicit solver is cheaper per
    unit time, since one implicit step costs (stages) × (Newton sweeps) × (Krylov
    iterations) Jacobian–vector products.

    **Arguments:**

    - `order`: 3, 4 or 5: `diffrax.Kvaerno3`, `Kvaerno4` or `Kvaerno5` (Kværnø 2004,
      *Singly diagonally implicit Runge–Kutta methods with an explicit first stage*,
      BIT 44).
    - `krylov_rtol`: the residual of each GMRES solve relative to its right-hand side (in the
      2-norm, not entry by entry), in $(0, 1)$.
    - `restart`: the GMRES restart length (Krylov vectors kept), a positive integer.
    - `krylov_max_steps`: at most this many GMRES iterations per solve; when reached
      the Newton sweep fails and the step is rejected (retried smaller).
    - `newton_max_steps`: chord sweeps per stage before the step is rejected.

    **Returns:** a `diffrax.AbstractImplicitSolver`.

    **Raises:** `ValueError` for an `order` other than 3, 4, 5 or an argument out of range.
    """
    fname = "stiff_solver"
    if isinstance(order, bool) or order not in _KVAERNO:
        raise ValueError(f"{fname}: `order` must be 3, 4 or 5 (Kvaerno3/4/5); got {order!r}.")
    if not 0.0 < float(krylov_rtol) < 1.0:
        raise ValueError(
            f"{fname}: `krylov_rtol` must lie in (0, 1); got {krylov_rtol!r}. "
            "Use e.g. 1e-4 (an inexact Newton correction)."
        )
    for name, value in (
        ("restart", restart),
        ("krylov_max_steps", krylov_max_steps),
        ("newton_max_steps", newton_max_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{fname}: `{name}` must be a positive int; got {value!r}.")
    krylov = lx.GMRES(  # on a unit right-hand side: `atol` is the relative residual
        rtol=0.0,
        atol=float(krylov_rtol),
        restart=restart,
        stagnation_iters=restart,
        max_steps=krylov_max_steps,
    )
    root_finder = diffrax.with_stepsize_controller_tols(KrylovChord)(linear_solver=krylov)
    return _KVAERNO[order](root_finder=root_finder, root_find_max_steps=newton_max_steps)
