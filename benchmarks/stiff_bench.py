r"""Long flows after convergence (issue 16): the `matrix_completion` workload continued far
past its loss threshold, explicit against implicit.

The setting of `experiments/matrix_completion.py` (100 × 100, rank 5, $\|W^\star\|_F = 100$,
2,000 observed entries, mean squared error, seed 0), depth 3 from its balanced start at scale
1e-3, intrinsic flow $\dot z = -K_3(z)[\nabla\ell(z)]$ (`kernels.balanced`).

1. **To the threshold**: `intrinsic_flow(..., target_loss=1e-6)` with the explicit default
   (Tsit5): the time $t_\star$, steps and seconds.
2. **Past it, to $T$** (default 3e6) from $z(t_\star)$, on the same save times:
   - explicit Tsit5 with at most `--explicit-steps` steps: how far it gets, in how long
     (its step is bounded by the stability of the learned modes);
   - [`node_flow.stiff_solver`][] (Kværnø 5, matrix-free Newton–Krylov): seconds, steps
     and the loss, test error and effective rank at $T$.
   The implicit solution is checked against the explicit one at every save time the
   explicit solve reached (an independent solver), and against itself at a 10× tighter
   tolerance at $T$.

Seconds include compilation (a few seconds; a second call would double the long solves).
`nfev` counts the vector-field evaluations of the stages, not the Jacobian–vector products
of the Newton–Krylov iterations.
Writes `<out>/stiff.json` (records `tool`, `case`, `seconds`, `rel_err`, `nfev`) atomically;
`bench.py` merges its records into `summary.json` and the table.
Run: `python benchmarks/stiff_bench.py --help`.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "experiments"))

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _hardware import hardware  # noqa: E402
from jax.tree_util import Partial  # noqa: E402
from matrix_completion import completion_loss, problem  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_write_json  # noqa: E402


logger = logging.getLogger("stiff_bench")

DEPTH, SCALE, OBSERVED, TARGET_LOSS = 3, 1e-3, 2000, 1e-6
RTOL, ATOL = 1e-8, 1e-10
NUM_SAVES = 25


def solve(z0, loss, t0, t1, ts, solver, rtol, max_steps, target_loss=None):
    """One intrinsic flow; returns (solution, seconds, compilation included: a few seconds
    against the minutes of the long solves, and a second call would double them)."""
    kernel = Partial(nf.kernels.balanced, depth=DEPTH)
    start = time.perf_counter()
    sol = nf.intrinsic_flow(
        z0, loss, kernel, t1, t0=t0, ts=ts, rtol=rtol, atol=ATOL * rtol / RTOL,
        max_steps=max_steps, throw=False, solver=solver, target_loss=target_loss,
    )  # fmt: skip
    jax.block_until_ready(sol.zs)
    return sol, time.perf_counter() - start


def reached(sol) -> np.ndarray:
    """Which save times the solve reached (a failed or stopped solve leaves `inf` after)."""
    ts = np.asarray(sol.ts)
    return np.isfinite(ts) & (ts <= float(sol.t_final))


def describe(sol, loss, W, seconds):
    """Steps, result and the measures at the last save the solve reached."""
    saved = np.flatnonzero(reached(sol))
    z = sol.zs[saved[-1]] if saved.size else None
    out = {
        "seconds": seconds,
        "steps": int(sol.stats["num_steps"]),
        "nfev": int(sol.stats["num_vf_evals"]),
        "result": nf.RESULTS[sol.result] or "successful",
        "t_reached": float(sol.t_final),
    }
    if z is not None and bool(jnp.all(jnp.isfinite(z))):
        out |= {
            "t_last_save": float(sol.ts[saved[-1]]),
            "loss": float(loss(z)),
            "test_error": float(jnp.linalg.norm(z - W) / jnp.linalg.norm(W)),
            "effective_rank": float(nf.effective_rank(z)),
        }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=float, default=3e6, help="end time of the long flow")
    p.add_argument("--explicit-steps", type=int, default=20_000, help="Tsit5 step budget")
    p.add_argument("--implicit-steps", type=int, default=5_000, help="Kvaerno5 step budget")
    p.add_argument("--n", type=int, default=100, help="matrix size (100: the study's)")
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    args = p.parse_args(argv)
    for flag, bad, need in (
        ("--T", not 0 < args.T < float("inf"), "a finite positive end time, e.g. 3e6"),
        ("--explicit-steps", args.explicit_steps < 1, "a positive step budget"),
        ("--implicit-steps", args.implicit_steps < 1, "a positive step budget"),
        ("--n", args.n < 6, "a matrix size ≥ 6 (rank 5 and n²/5 observed entries)"),
    ):
        if bad:
            value = getattr(args, flag[2:].replace("-", "_"))
            p.error(f"{flag} must be {need}; got {value!r}.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    observed = min(OBSERVED, args.n**2 // 5)
    W, omegas, unit_start = problem(0, args.n, 5, args.n * 1.0, (observed,))
    loss = completion_loss(W, *omegas[observed])
    z0 = SCALE * unit_start

    first, sec = solve(z0, loss, 0.0, args.T, None, None, RTOL, 100_000, TARGET_LOSS)
    t_star, z_star = float(first.t_final), first.zs[-1]
    threshold = describe(first, loss, W, sec)
    logger.info("to loss %g: t = %.4g, %d steps, %.1f s", TARGET_LOSS, t_star,
                threshold["steps"], sec)  # fmt: skip
    ts = jnp.geomspace(t_star, args.T, NUM_SAVES + 1)[1:]

    explicit, sec = solve(z_star, loss, t_star, args.T, ts, None, RTOL, args.explicit_steps)
    explicit_rec = describe(explicit, loss, W, sec)
    logger.info("explicit: %s", explicit_rec)

    stiff = nf.stiff_solver()
    implicit, sec = solve(z_star, loss, t_star, args.T, ts, stiff, RTOL, args.implicit_steps)
    implicit_rec = describe(implicit, loss, W, sec)
    logger.info("implicit: %s", implicit_rec)
    both = reached(implicit) & reached(explicit)
    if both.any():  # against the explicit solve, an independent solver, where both reached
        diff = jnp.linalg.norm(implicit.zs[both] - explicit.zs[both], axis=(-2, -1))
        implicit_rec["rel_err_vs_explicit"] = float(
            jnp.max(diff / jnp.linalg.norm(explicit.zs[both], axis=(-2, -1)))
        )
    if reached(implicit).all():  # and against itself at a 10× tighter tolerance, at T
        tight, _ = solve(z_star, loss, t_star, args.T, ts, stiff, RTOL / 10, args.implicit_steps)
        if reached(tight).all():
            implicit_rec["rel_err_vs_rtol_tenth"] = float(
                jnp.linalg.norm(implicit.zs[-1] - tight.zs[-1]) / jnp.linalg.norm(tight.zs[-1])
            )
    logger.info("implicit checks: %s", implicit_rec)

    case = f"matrix_completion n={args.n} depth={DEPTH} from t*={t_star:.3g} to T={args.T:g}"
    records = [
        {"tool": "node_flow", "case": f"to loss {TARGET_LOSS:g} (Tsit5)", **threshold},
        {"tool": "node_flow-Tsit5", "case": case, **explicit_rec},
        {"tool": "node_flow-stiff_solver", "case": case, **implicit_rec,
         "rel_err": implicit_rec.get("rel_err_vs_explicit")},
    ]  # fmt: skip
    atomic_write_json(
        args.out / "stiff.json",
        {"config": vars(args) | {"out": str(args.out)}, "hardware": hardware(), "records": records},
    )


if __name__ == "__main__":
    main()
