"""Sweeps at scale: 64 seeds of a depth-64 gradient flow, batched by `node_flow.sweep`
(vmap, one compiled function) against a Python loop over seeds of the jitted flow, on one
device; then the same sweep sharded over 4 host devices in a fresh process
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`).

Writes `<out>/sweep.json` and `<out>/sweep.md` atomically. Run:
`python benchmarks/sweep_bench.py --out results/bench` (part of `make bench`).
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from node_flow._io import atomic_write, atomic_write_json


logger = logging.getLogger("sweep_bench")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--width", type=int, default=3)
    p.add_argument("--T", type=float, default=2.0, help="training horizon")
    p.add_argument("--tol", type=float, default=1e-10, help="rtol = atol of the solver")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--host-devices", type=int, default=4, help="devices of the sharded run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def problem(args):
    """fn: seed key ↦ (z(t), loss(t), steps) of the gradient flow of a depth-L residual
    network with random residual weights; the data are shared by all seeds."""
    import jax.numpy as jnp

    import node_flow as nf

    n, L = args.width, args.depth
    kx, ky = jax.random.split(jax.random.key(10_000 + args.seed))
    loss = nf.LeastSquares(
        jax.random.normal(kx, (n, 2 * n)) / (2 * n) ** 0.5, jax.random.normal(ky, (n, 2 * n))
    )
    ts = jnp.linspace(0.0, args.T, 21)

    def fn(key):
        A = 0.5 * jax.random.normal(key, (L, n, n))
        sol = nf.gradient_flow(
            nf.ResidualLinearNetwork(A), loss, args.T, ts=ts, rtol=args.tol, atol=args.tol
        )
        return {"zs": sol.zs, "losses": sol.losses, "steps": sol.stats["num_steps"]}

    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    return fn, keys


def _timed(thunk, reps=1):
    """The output and the median wall time of `reps` calls."""
    times = []
    for _ in range(reps):
        tic = time.perf_counter()
        out = jax.block_until_ready(thunk())
        times.append(time.perf_counter() - tic)
    return out, sorted(times)[len(times) // 2]


def one_device(args) -> tuple[dict, dict]:
    import numpy as np

    from node_flow._sweep import sweep

    fn, keys = problem(args)
    device = jax.devices()[0]
    one = jax.jit(fn)
    _, loop_compile = _timed(lambda: one(keys[0]))
    loop, loop_s = _timed(lambda: [one(k) for k in keys], args.reps)
    loop = jax.tree.map(lambda *x: np.stack(x), *loop)
    fn(keys[0])  # the eager loop: what a script calling nf.gradient_flow per seed does
    _, eager_s = _timed(lambda: [fn(k) for k in keys], args.reps)
    _, sweep_first = _timed(lambda: sweep(fn, keys, devices=[device]))
    batched, sweep_s = _timed(lambda: sweep(fn, keys, devices=[device]).results, args.reps)
    diff = max(float(np.max(np.abs(batched[k] - loop[k]))) for k in ("zs", "losses"))
    steps = np.asarray(loop["steps"])
    return {
        "device": str(device),
        "loop_s": loop_s,
        "loop_compile_s": loop_compile,
        "eager_loop_s": eager_s,
        "vmap_s": sweep_s,
        "vmap_first_call_s": sweep_first,
        "ratio_loop_over_vmap": loop_s / sweep_s,
        "ratio_eager_loop_over_vmap": eager_s / sweep_s,
        "max_abs_diff_vmap_vs_loop": diff,
        "bitwise_vmap_vs_loop": bool(
            all(np.array_equal(batched[k], loop[k]) for k in ("zs", "losses", "steps"))
        ),
        "steps_min_mean_max": [int(steps.min()), float(steps.mean()), int(steps.max())],
    }, batched


def sharded(args) -> dict:
    """In the worker process: the sweep over every (host) device."""
    from node_flow._sweep import sweep

    fn, keys = problem(args)
    first, first_s = _timed(lambda: sweep(fn, keys))
    res, sweep_s = _timed(lambda: sweep(fn, keys), args.reps)
    return {
        "devices": jax.device_count(),
        "batch_size": res.batch_size,
        "per_device": res.batch_size // jax.device_count(),
        "sharding": str(res.sharding),
        "first_call_s": first_s,
        "sweep_s": sweep_s,
    }, res.results


def run_worker(args, reference_path: Path) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={args.host_devices}",
        JAX_PLATFORMS="cpu",
    )
    cmd = [sys.executable, __file__, "--worker", str(reference_path)]
    cmd += [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in ("seeds", "depth", "width")]
    cmd += [f"--T={args.T}", f"--tol={args.tol}", f"--seed={args.seed}", f"--reps={args.reps}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"note": f"failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(args) -> None:
    import numpy as np

    report, results = sharded(args)
    reference = np.load(args.worker)
    if reference["platform"] == jax.devices()[0].platform:
        report["max_abs_diff_vs_one_device"] = max(
            float(np.max(np.abs(results[k] - reference[k]))) for k in ("zs", "losses")
        )
        report["bitwise_vs_one_device"] = bool(
            all(np.array_equal(results[k], reference[k]) for k in ("zs", "losses", "steps"))
        )
    print(json.dumps(report))


def markdown(summary) -> str:
    c, one, four = summary["config"], summary["one_device"], summary["host_devices"]
    lines = [
        f"### Sweep: {c['seeds']} seeds of a depth-{c['depth']} flow (width {c['width']})",
        "",
        "| run | devices | seconds | notes |",
        "|---|---|---|---|",
        f"| Python loop over seeds, `jax.jit(fn)` | 1 ({one['device']}) | {one['loop_s']:.2f} "
        f"| + {one['loop_compile_s']:.1f} s compile |",
        f"| Python loop over seeds, `fn` (nf.gradient_flow per seed) | 1 "
        f"| {one['eager_loop_s']:.2f} "
        f"| loop / vmap = **{one['ratio_eager_loop_over_vmap']:.1f}×** |",
        f"| `sweep` (vmap) | 1 | {one['vmap_s']:.2f} | first call {one['vmap_first_call_s']:.1f}"
        f" s; loop / vmap = **{one['ratio_loop_over_vmap']:.1f}×**; max diff "
        f"{one['max_abs_diff_vmap_vs_loop']:.1e} |",
    ]
    if "sweep_s" in four:
        diff = four.get("max_abs_diff_vs_one_device")
        lines.append(
            f"| `sweep` sharded, host devices | {four['devices']} | {four['sweep_s']:.2f} | "
            f"{four['per_device']} seeds per device, first call {four['first_call_s']:.1f} s"
            + ("" if diff is None else f"; vs one device {diff:.1e}")
            + " |"
        )
    else:
        lines.append(f"| `sweep` sharded | – | – | {four.get('note', '')} |")
    lines += [
        "",
        f"Solver steps per seed (min / mean / max): {one['steps_min_mean_max']}; "
        f"{os.cpu_count()} CPU cores. Host devices share the same cores: they show the "
        "sharding, not a speed-up.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    from node_flow import enable_compilation_cache

    enable_compilation_cache(Path(__file__).resolve().parents[1] / ".cache" / "jax")
    if args.worker is not None:
        worker(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    import numpy as np

    start = time.time()
    logger.info("one device: %d seeds, depth %d, loop vs vmap", args.seeds, args.depth)
    one, batched = one_device(args)
    logger.info(
        "jit loop %.3f s, eager loop %.3f s, vmap %.3f s: ratios %.1f, %.1f",
        one["loop_s"],
        one["eager_loop_s"],
        one["vmap_s"],
        one["ratio_loop_over_vmap"],
        one["ratio_eager_loop_over_vmap"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "one_device.npz"
        np.savez(ref, platform=jax.devices()[0].platform, **batched)
        logger.info("%d host devices, in a fresh process", args.host_devices)
        four = run_worker(args, ref)
    logger.info("sharded: %s", four)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "worker")}
    summary = {
        "config": config,
        "one_device": one,
        "host_devices": four,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "seconds_total": time.time() - start,
    }
    atomic_write_json(args.out / "sweep.json", summary)
    atomic_write(args.out / "sweep.md", markdown(summary))
    logger.info("wrote %s and %s", args.out / "sweep.json", args.out / "sweep.md")


if __name__ == "__main__":
    main()
