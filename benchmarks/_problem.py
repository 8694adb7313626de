r"""The benchmark problem, identical for every tool, and the shared measuring protocol.

A deep linear network $z = U_L \cdots U_1$ of square width $n$ trained on
$\ell(z) = \|zX - Y\|_F^2 / (2N)$, $N = 2n$, with seeded Gaussian $X, Y$, from the balanced
near-identity point $U_i = \exp(S/L)$ ($S$ a fixed small symmetric matrix), along
$\dot U_i = -\frac1L \nabla_{U_i} L$ on $t \in [0, 5]$. NumPy only: peers import it without JAX
(results are written with `node_flow._io`, imported by the orchestrators and by a worker only
after its measurement).
"""

import time

import numpy as np
import scipy.linalg


T1 = 5.0
TARGET = 1e-6  # relative Frobenius error of z(T1) against the reference
REF_TOL = 1e-12
TOLS = tuple(10.0**-k for k in range(2, 11))  # 1e-2 … 1e-10, loosest first


def make_problem(L: int, n: int, seed: int = 0) -> dict:
    """Seeded data; the same arrays for every tool (float64)."""
    rng = np.random.default_rng([seed, n])
    N = 2 * n
    X = rng.standard_normal((n, N))
    Y = rng.standard_normal((n, N))
    B = rng.standard_normal((n, n))
    S = 0.5 * (B + B.T) / np.sqrt(2 * n)  # symmetric, spectral norm ≈ 1
    U = scipy.linalg.expm(S / L)
    U0 = np.ascontiguousarray(np.broadcast_to(U, (L, n, n)))
    return {"L": L, "n": n, "X": X, "Y": Y, "S": S, "U0": U0, "z0": scipy.linalg.expm(S)}


def product(U: np.ndarray) -> np.ndarray:
    """$U_L \\cdots U_1$ for a stack `U[0] = U_1` (sequential; for checking results)."""
    z = U[0]
    for Uk in U[1:]:
        z = Uk @ z
    return z


def rel_err(z: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(z) - ref) / np.linalg.norm(ref))


def vf_flops(L: int, n: int) -> float:
    """Flops of one parameter-flow vector field: $6 L n^3$ (forward and backward products)."""
    return 6.0 * L * n**3


def search_and_time(solve, ref, *, reps=3, start=None, budget_s=float("inf")):
    """The loosest tolerance in `TOLS` meeting `TARGET`, then the median of `reps` timed solves.

    `solve(tol) -> (z, nfev)` must already be warm (compiled). The search starts at
    `start` (a hint from the previous size), walks looser while the target is met and
    tighter while it is not; every trial is timed, and the trial at the chosen tolerance
    counts as the first repetition. Stops early (recording why) when `budget_s` is spent.
    """
    t_begin = time.perf_counter()
    trials = {}

    def trial(i):
        t = time.perf_counter()
        z, nfev = solve(TOLS[i])
        seconds = time.perf_counter() - t
        trials[i] = {
            "tol": TOLS[i],
            "seconds": seconds,
            "nfev": int(nfev),
            "rel_err": rel_err(z, ref),
        }
        return trials[i]["rel_err"] <= TARGET

    def over_budget():
        return time.perf_counter() - t_begin > budget_s

    i = TOLS.index(start) if start in TOLS else TOLS.index(1e-6)
    chosen = None
    if trial(i):
        chosen = i
        while chosen > 0 and not over_budget() and trial(chosen - 1):
            chosen -= 1
    else:
        while i + 1 < len(TOLS) and not over_budget():
            i += 1
            if trial(i):
                chosen = i
                break
    record = {
        "trials": [trials[k] for k in sorted(trials)],
        "search_s": time.perf_counter() - t_begin,
    }
    if chosen is None:
        record["note"] = "target not met" if not over_budget() else "skipped: over budget"
        return record
    times = [trials[chosen]["seconds"]]
    while len(times) < reps:
        if over_budget():
            record["note"] = f"over budget: {len(times)} repetitions"
            break
        t = time.perf_counter()
        solve(TOLS[chosen])
        times.append(time.perf_counter() - t)
    best = trials[chosen]
    record.update(
        tol=best["tol"],
        nfev=best["nfev"],
        rel_err=best["rel_err"],
        seconds=float(np.median(times)),
        times=times,
        reps=len(times),
    )
    return record
