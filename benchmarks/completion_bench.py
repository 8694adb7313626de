"""The `matrix_completion` workload against the researchers' own method (issue 16).

A 100 × 100 rank-5 matrix $W^\\star$ (Gaussian factors, $\\|W^\\star\\|_F = 100$), 2,000 observed
entries, loss $\\ell(z) = \\frac{1}{2|\\Omega|}\\sum_\\Omega (z_{ij} - w^\\star_{ij})^2$
([`node_flow.MatrixCompletion`][]), a depth-3 network $z = U_3U_2U_1$ from the balanced start
$U_j = \\alpha^{1/3} I$, $\\alpha = 10^{-3}$, trained until the loss reaches $10^{-6}$ (time $T$).

- **Reference**: the intrinsic flow $\\dot z = -K_3(z)\\nabla\\ell$ (an independent formulation:
  the balanced kernel, not the factors) at rtol 1e-11, checked against rtol 1e-10.
- **PyTorch**: plain gradient descent on the factors (float64, autograd, CPU threads = cores),
  $\\theta_{k+1} = \\theta_k - \\eta\\nabla L$, training time $t = k\\eta$. The largest stable $\\eta$
  is found by a halving search; for each trajectory accuracy (max relative Frobenius error of
  $z$ over the save times against the reference) the largest $\\eta$ meeting it (GD's error is
  first order in $\\eta$: fitted from two runs, then checked). Runs longer than `--gd-budget`
  seconds are timed on their first steps and extrapolated (recorded as such).
- **node_flow**: [`node_flow.gradient_flow`][] on the same factors (Tsit5 + PID), the loosest
  tolerance meeting each accuracy; compilation is reported separately.

Writes `completion.json` (records with `tool`, `case`, `seconds`, `rel_err`, `nfev`, hardware)
atomically to `--out`.
"""

import argparse
import logging
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

from _hardware import hardware  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_write_json  # noqa: E402


logger = logging.getLogger("completion_bench")

N, RANK, OBSERVED, NORM, DEPTH, ALPHA = 100, 5, 2000, 100.0, 3, 1e-3
TARGET_LOSS = 1e-6
ACCURACIES = (1e-2, 1e-4)
NUM_SAVES = 20
NF_TOLS = tuple(10.0**-k for k in range(3, 12))  # node_flow rtol search, loosest first


def make_problem(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, RANK)) @ rng.standard_normal((RANK, N))
    W *= NORM / np.linalg.norm(W)
    idx = np.sort(rng.choice(N * N, size=OBSERVED, replace=False))
    rows, cols = np.unravel_index(idx, (N, N))
    return {"W": W, "rows": rows, "cols": cols, "values": W[rows, cols]}


def loss_of(P):
    return nf.MatrixCompletion(P["rows"], P["cols"], P["values"], (N, N))


def reference(P, T, ts, rtol):
    kernel = jax.tree_util.Partial(nf.kernels.balanced, depth=DEPTH)
    sol = nf.intrinsic_flow(
        ALPHA * jnp.eye(N), loss_of(P), kernel, T, ts=ts, rtol=rtol, atol=1e-3 * rtol,
        max_steps=200_000,
    )  # fmt: skip
    return np.asarray(sol.zs), np.asarray(sol.losses)


def time_to_target(P) -> float:
    """The first time the reference loss is ≤ TARGET_LOSS, on a fine logarithmic grid."""
    ts = np.geomspace(1.0, 3e4, 400)
    _, losses = reference(P, ts[-1], ts, 1e-9)
    hit = np.nonzero(losses <= TARGET_LOSS)[0]
    if not hit.size:
        raise RuntimeError(f"completion_bench: loss {losses[-1]:.3g} > {TARGET_LOSS} at t = 3e4")
    return float(np.ceil(ts[hit[0]]))


def max_rel_err(zs, ref) -> float:
    num = np.linalg.norm(zs - ref, axis=(-2, -1))
    return float(np.max(num / np.linalg.norm(ref, axis=(-2, -1))))


def nodeflow_solve(P, T, ts, rtol):
    U0 = (ALPHA ** (1.0 / DEPTH)) * jnp.eye(N)
    model = nf.LinearNetwork((U0,) * DEPTH)
    t = time.perf_counter()
    sol = nf.gradient_flow(
        model, loss_of(P), T, ts=ts, rtol=rtol, atol=1e-3 * rtol, max_steps=500_000,
        save_models=False,
    )  # fmt: skip
    zs = np.asarray(jax.block_until_ready(sol.zs))
    return zs, time.perf_counter() - t, int(sol.stats["num_vf_evals"])


def torch_gd(P, eta, ts, threads, budget=None):
    """Gradient descent with step `eta`; z at the steps nearest to `ts`. Returns
    (zs, seconds, steps, extrapolated); stops early (zs None) when `budget` is exceeded."""
    import torch

    torch.set_num_threads(threads)
    dt = torch.float64
    rows, cols = torch.as_tensor(P["rows"]), torch.as_tensor(P["cols"])
    vals = torch.as_tensor(P["values"], dtype=dt)
    Us = [(ALPHA ** (1.0 / DEPTH) * torch.eye(N, dtype=dt)).requires_grad_() for _ in range(DEPTH)]
    marks = np.rint(np.asarray(ts) / eta).astype(int)
    steps, out, k = int(marks[-1]), [], 0
    start = time.perf_counter()
    for mark in marks:
        while k < mark:
            z = Us[2] @ Us[1] @ Us[0]
            loss = 0.5 * torch.mean((z[rows, cols] - vals) ** 2)
            loss.backward()
            with torch.no_grad():
                for U in Us:
                    U -= eta * U.grad
                    U.grad = None
            k += 1
            if budget is not None and k % 1000 == 0:
                elapsed = time.perf_counter() - start
                if elapsed > budget:
                    return None, elapsed * steps / k, steps, True
        with torch.no_grad():
            z = (Us[2] @ Us[1] @ Us[0]).numpy().copy()
        if not np.all(np.isfinite(z)) or np.abs(z).max() > 1e6:
            return None, time.perf_counter() - start, steps, False
        out.append(z)
    return np.stack(out), time.perf_counter() - start, steps, False


def stable_eta(P, T, threads) -> float:
    """The largest η in 2^k (k = 3, 2, …) whose descent reaches the target loss by T."""
    eta = 8.0
    while eta > 1e-3:
        zs, *_ = torch_gd(P, eta, np.array([T]), threads)
        if zs is not None:
            r = zs[0][P["rows"], P["cols"]] - P["values"]
            if 0.5 * np.mean(r**2) <= 10 * TARGET_LOSS:
                return eta
        eta /= 2
    raise RuntimeError("completion_bench: no stable step size ≥ 1e-3")


def gd_for_accuracy(P, ts, ref, eta_max, acc, threads, budget):
    """The largest η (fitted from GD's first-order error, then checked) meeting `acc`."""
    eta = eta_max
    zs, sec, steps, _ = torch_gd(P, eta, ts, threads)
    err = max_rel_err(zs, ref) if zs is not None else np.inf
    if err <= acc:
        return {"eta": eta, "seconds": sec, "rel_err": err, "nfev": steps, "extrapolated": False}
    zs2, *_ = torch_gd(P, eta / 4, ts, threads, budget)
    err2 = max_rel_err(zs2, ref) if zs2 is not None else np.inf
    slope = err2 / (eta / 4) if np.isfinite(err2) else err / eta
    eta = min(eta, 0.8 * acc / slope)
    # grid-aligned: every save time a whole number of steps
    zs, sec, steps, extrapolated = torch_gd(P, eta, ts, threads, budget)
    err = max_rel_err(zs, ref) if zs is not None else float(slope * eta)
    return {"eta": eta, "seconds": sec, "rel_err": err, "nfev": steps, "extrapolated": extrapolated}


def nodeflow_for_accuracy(P, T, ts, ref, acc):
    for rtol in NF_TOLS:
        zs, _, _ = nodeflow_solve(P, T, ts, rtol)
        err = max_rel_err(zs, ref)
        if err <= acc:
            times = []
            for _ in range(2):
                zs, sec, nfev = nodeflow_solve(P, T, ts, rtol)
                times.append(sec)
            return {"rtol": rtol, "seconds": min(times), "rel_err": err, "nfev": nfev}
    raise RuntimeError(f"completion_bench: node_flow misses accuracy {acc} at rtol 1e-11")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--gd-budget", type=float, default=120.0, help="seconds per GD run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    P = make_problem()
    T = time_to_target(P)
    ts = np.linspace(T / NUM_SAVES, T, NUM_SAVES)
    ref, losses = reference(P, T, ts, 1e-11)
    ref_check = max_rel_err(reference(P, T, ts, 1e-10)[0], ref)
    logger.info("T = %g, final loss %.3g, reference self-check %.2e", T, losses[-1], ref_check)
    t = time.perf_counter()
    nodeflow_solve(P, T, ts, NF_TOLS[0])
    compile_s = time.perf_counter() - t
    eta_max = stable_eta(P, T, args.threads)
    logger.info("largest stable GD step %g", eta_max)
    records = []
    for acc in ACCURACIES:
        nf_rec = nodeflow_for_accuracy(P, T, ts, ref, acc)
        gd = gd_for_accuracy(P, ts, ref, eta_max, acc, args.threads, args.gd_budget)
        case = f"matrix_completion/accuracy={acc:g}"
        records.append({"tool": "node_flow", "case": case, **nf_rec})
        records.append({"tool": "torch-gd", "case": case, **gd})
        logger.info("%s: node_flow %.3g s, torch %.3g s (ratio %.3g)", case,
                    nf_rec["seconds"], gd["seconds"], gd["seconds"] / nf_rec["seconds"])  # fmt: skip
    out = {
        "problem": {
            "n": N,
            "rank": RANK,
            "observed": OBSERVED,
            "depth": DEPTH,
            "alpha": ALPHA,
            "target_loss": TARGET_LOSS,
            "T": T,
            "num_saves": NUM_SAVES,
        },  # fmt: skip
        "reference": {"rtol": 1e-11, "self_check_rel_err": ref_check},
        "node_flow_compile_s": compile_s,
        "torch_largest_stable_eta": eta_max,
        "hardware": hardware(torch_threads=args.threads),
        "records": records,
    }
    atomic_write_json(args.out / "completion.json", out)


if __name__ == "__main__":
    main()
