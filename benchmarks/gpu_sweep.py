"""One GPU against the CPU, in one process: the `matrix_completion` grid and a sweep of 4,096
configurations, each run with `node_flow.sweep` on one GPU and on the host CPU.

1. **Matrix-completion grid**: the problem of `experiments/matrix_completion.py` (100 × 100
   target of rank 5 and Frobenius norm 100, 2,000 observed entries, mean-squared loss).
   Each configuration draws a start $z_0$ whose singular values lie in `scale·[0.5, 1.5]`
   (Haar frames; the experiment's distribution), factors it into a balanced depth-L
   network, and follows the parameter flow (`gradient_flow`) until the loss reaches
   `--target-loss` or t = `--T`; the grid is depths × scales × seeds (one sweep per depth:
   the depth sets the shapes).
2. **4,096 configurations**: random residual weights of a depth-16, width-3 network on shared
   least-squares data (the problem of `sweep_bench.py`), one sweep of 4,096 seeds.

Each part reports seconds on each device (first call, with compilation, and a second call),
the largest difference between the GPU's and the CPU's results, and the failed
configurations. Writes `<out>/gpu_sweep.json` (records with `tool`, `case`, `seconds`,
`rel_err`, `nfev`, `hardware`). Without a GPU both runs are on the CPU (the record says so).
`benchmarks/gpu_check.sh` runs it; `--small` is a quick check of the script itself.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_write_json  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import matrix_completion as mc  # noqa: E402


logger = logging.getLogger("gpu_sweep")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    p.add_argument("--small", action="store_true", help="tiny sizes: a check of the script")
    p.add_argument("--configs", type=int, default=4096, help="configurations of part 2")
    p.add_argument("--T", type=float, default=1e6, help="time limit of the grid's flows")
    p.add_argument("--target-loss", type=float, default=1e-6, help="the grid's flows stop here")
    p.add_argument("--seeds", type=int, default=8, help="starts per depth and scale")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def completion_problem(n, rank, observed, seed):
    """`experiments/matrix_completion.py`'s target (‖W‖_F = 100) and observed entries."""
    W, omegas, _ = mc.problem(seed, n, rank, 100.0, (observed,))
    return mc.completion_loss(W, *omegas[observed]), W


def final_record(sol):
    """What a sweep keeps of one flow: its end point, loss, cost and result."""
    return {
        "z": sol.zs[-1],
        "loss": sol.losses[-1],
        "steps": sol.stats["num_steps"],
        "nfev": sol.stats["num_vf_evals"],
        "result": sol.result,
    }


def completion_fn(loss, n, depth, T, target_loss):
    """config {key, scale} ↦ final z, loss, steps, result of the balanced network's flow
    from $z_0$ = `scale` · (Haar frames, singular values in [0.5, 1.5]); the frames come
    from one depth-1 `balanced` draw (one batched QR) and the factors from one SVD."""

    def fn(config):
        z0 = config["scale"] * nf.init.balanced(config["key"], (n, n), 1.0).lift()
        sol = nf.gradient_flow(
            mc.balanced_network(z0, depth),
            loss,
            T,
            rtol=1e-6,
            atol=1e-9,
            max_steps=20_000,
            target_loss=target_loss,
            throw=False,
            save_models=False,
        )
        return final_record(sol)

    return fn


def residual_fn(n, depth, T, seed):
    kx, ky = jax.random.split(jax.random.key(10_000 + seed))
    loss = nf.LeastSquares(
        jax.random.normal(kx, (n, 2 * n)) / (2 * n) ** 0.5, jax.random.normal(ky, (n, 2 * n))
    )

    def fn(key):
        A = 0.5 * jax.random.normal(key, (depth, n, n))
        sol = nf.gradient_flow(
            nf.ResidualLinearNetwork(A), loss, T, rtol=1e-8, atol=1e-8, throw=False
        )
        return final_record(sol)

    return fn


def on_devices(fn, grid, devices):
    """Per device kind: (first-call seconds, second-call seconds, results as NumPy)."""
    out = {}
    for kind, device in devices.items():
        tic = time.perf_counter()
        res = nf.sweep(fn, grid, devices=[device])
        jax.block_until_ready(res.results)
        first = time.perf_counter() - tic
        tic = time.perf_counter()
        res = nf.sweep(fn, grid, devices=[device])
        jax.block_until_ready(res.results)
        second = time.perf_counter() - tic
        results = jax.tree.map(np.asarray, res.results)
        out[kind] = (first, second, results, len(res.failed))
        logger.info("%s on %s: first %.2f s, second %.2f s", kind, device, first, second)
    return out


def compare(case, runs, label):
    """Records per device, and the GPU–CPU difference of the final z (relative)."""
    records = []
    ref = runs["cpu"][2]["z"]
    for kind, (first, second, res, failed) in runs.items():
        diff = float(np.max(np.linalg.norm(res["z"] - ref, axis=(-2, -1))))
        scale = float(np.max(np.linalg.norm(ref, axis=(-2, -1))))
        records.append(
            {
                "tool": f"node_flow sweep ({kind})",
                "case": case,
                "seconds": second,
                "first_call_s": first,
                "rel_err": diff / scale,  # against the CPU run of the same sweep
                "nfev": int(np.sum(res["nfev"])),
                "steps_max": int(np.max(res["steps"])),
                "final_loss_max": float(np.max(res["loss"])),
                "failed": failed,
                "hardware": label[kind],
            }
        )
    return records


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    nf.enable_compilation_cache(Path(__file__).resolve().parents[1] / ".cache" / "jax")
    cpu = jax.devices("cpu")[0]
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        gpu = None
        logger.warning("no GPU: both runs are on the CPU")
    devices = {"cpu": cpu, "gpu": gpu or cpu}
    label = {k: f"{d.platform}: {d.device_kind}" for k, d in devices.items()}
    n, rank, observed = (20, 2, 200) if args.small else (100, 5, 2000)
    depths, scales = ((2, 3), (1e-2,)) if args.small else ((2, 3, 4), (1e-3, 1e-2))
    seeds = 2 if args.small else args.seeds
    T = 10.0 if args.small else args.T
    configs = min(args.configs, 64) if args.small else args.configs
    loss, _ = completion_problem(n, rank, observed, args.seed)
    keys = jax.random.split(jax.random.key(args.seed), configs)
    work = [
        (
            f"residual depth=16 width=3 T=2: {configs} configurations",
            residual_fn(3, 16, 2.0, args.seed),
            keys,
        )
    ]
    for depth in depths:
        keys = jax.random.split(jax.random.key(args.seed + depth), seeds)
        grid = {
            "key": jnp.repeat(keys, len(scales), axis=0),
            "scale": jnp.tile(jnp.asarray(scales), seeds),
        }
        case = (
            f"matrix_completion n={n} rank={rank} observed={observed} depth={depth} "
            f"to loss {args.target_loss:g} or t={T:g}: {len(scales) * seeds} configurations "
            f"(z0 scales {list(scales)})"
        )
        work.append((case, completion_fn(loss, n, depth, T, args.target_loss), grid))
    records = []
    for case, fn, grid in work:  # the file is rewritten after each case: a cut run keeps them
        new = compare(case, on_devices(fn, grid, devices), label)
        records += new
        summary = {"devices": label, "jax": jax.__version__, "records": records}
        atomic_write_json(args.out / "gpu_sweep.json", summary)
        for r in new:
            logger.info(
                "%-24s %-90s %8.3f s (first %.1f s)  rel diff vs CPU %.1e  failed %d",
                r["tool"],
                r["case"],
                r["seconds"],
                r["first_call_s"],
                r["rel_err"],
                r["failed"],
            )


if __name__ == "__main__":
    main()
