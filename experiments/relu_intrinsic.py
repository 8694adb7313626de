"""ReLU networks: gradient flow through the kinks (Filippov sliding), the metric M(θ(t)) against
the intrinsic kernel K(z(t), h(θ0)), and the parameter flow against the intrinsic flow in z on
every interval (THEORY §4).

Two- and three-layer MLPs and a DAG with skip connections, generic unbalanced
initializations, trained by gradient flow to `--t1` on a small regression set with
`node_flow.relu.train`; then (unless `--no-large`) a two-layer ReLU network with 50 hidden
neurons, 100 inputs and 1,000 samples of a 3-neuron teacher, trained by gradient flow to
`--large-t1` and compared with [`node_flow.gradient_descent`] at decreasing step sizes
(autodiff ReLU'(0) = 0; its iterates approach the flow at first order). Writes
`relu_intrinsic.json` (per network: stop reason, pattern changes, sliding intervals, the
comparison errors, every interval) and `relu_intrinsic.png` (loss, kink events and sliding
intervals) to `--out`.

    python experiments/relu_intrinsic.py --out results/relu --seed 0 --t1 3 [--no-large]
"""

import argparse
import logging
import math
import os
import tempfile
import time
from types import SimpleNamespace

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import node_flow as nf  # noqa: E402
import node_flow.relu as relu  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_json  # noqa: E402


logger = logging.getLogger("relu_intrinsic")

# Inputs 0, 1; constant 2; hidden 3, 4, 5; outputs 6, 7; skips 1→5, 3→6, 4→7, 0→6.
DAG_EDGES = (
    (0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4),
    (3, 5), (4, 5), (1, 5), (2, 5), (5, 6), (5, 7), (3, 6), (4, 7), (0, 6),
)  # fmt: skip

# The large case (Kunin et al. 2024; Chizat & Bach's lazy vs rich): inputs, hidden
# neurons, samples, teacher neurons; first-layer scale 2/√d (pre-activations of order 2)
# and a small output layer 0.05/√m.
LARGE = dict(inputs=100, hidden=50, samples=1000, teacher=3, w_scale=2.0, u_scale=0.05)
GD_STEPS = (0.02, 0.01, 0.005, 0.0025)


def make_mlp(key, widths, scales):
    keys = jr.split(key, 2 * len(widths))
    weights = [
        scales[j] * jr.normal(keys[j], (widths[j + 1], widths[j])) for j in range(len(widths) - 1)
    ]
    biases = [
        0.5 * jr.normal(keys[len(widths) + j], (widths[j + 1],)) for j in range(len(widths) - 1)
    ]
    return relu.MLP(weights, biases)


def make_dag(key):
    scales = jnp.asarray([1.3] * 6 + [0.6] * 4 + [0.9] * 5)
    w = jr.normal(key, (len(DAG_EDGES),)) * scales
    return relu.DAGNetwork(DAG_EDGES, w, inputs=(0, 1), outputs=(6, 7), constants=(2,))


def make_data(key, n):
    X = jr.normal(key, (n, 2))
    Y = jnp.stack([jnp.sin(2 * X[:, 0]) + 0.5 * X[:, 1], jnp.cos(X[:, 0]) * X[:, 1]], axis=1)
    return X, Y


def make_large(key):
    """Teacher y = Σ_k relu(w*_k · x) with orthonormal w*_k; student without biases."""
    c = LARGE
    kx, kt, kw, ku = jr.split(key, 4)
    X = jr.normal(kx, (c["samples"], c["inputs"]))
    teacher = jnp.linalg.qr(jr.normal(kt, (c["inputs"], c["teacher"])))[0].T
    Y = jnp.sum(jax.nn.relu(X @ teacher.T), axis=1, keepdims=True)
    W = c["w_scale"] * jr.normal(kw, (c["hidden"], c["inputs"])) / math.sqrt(c["inputs"])
    U = c["u_scale"] * jr.normal(ku, (1, c["hidden"])) / math.sqrt(c["hidden"])
    return relu.MLP([W, U]), X, Y


@eqx.filter_jit
def diagnostics(net, sol):
    """Relative ‖M(θ(t)) − K(z(t), h0)‖_F / ‖M‖_F and h drift at every save."""
    models = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), sol.models)
    zs = sol.zs.reshape(-1, sol.zs.shape[-1])
    Ms = jax.vmap(relu.metric_matrix)(models)
    Ks = jax.vmap(lambda z: relu.intrinsic_kernel(z, sol.h0, net.arch))(zs)
    mk = jnp.linalg.norm(Ms - Ks, axis=(1, 2)) / jnp.linalg.norm(Ms, axis=(1, 2))
    hs = jax.vmap(relu.conservation_laws)(models)
    drift = jnp.max(jnp.abs(hs - sol.h0), axis=1) / jnp.max(jnp.abs(sol.h0))
    return mk, drift


def interval_summary(sol):
    """What the summary JSON records about the intervals of a run."""
    errors = {"flow": [], "velocity": []}
    for iv in sol.intervals:
        if iv.intrinsic_error is not None:
            errors[iv.intrinsic_kind].append(iv.intrinsic_error)
    return {
        "stop_reason": sol.stop_reason,
        "t_final": float(sol.boundaries[-1]),
        "pattern_changes": sol.num_pattern_changes,
        "pattern_change_times": [float(t) for t in sol.switch_times],
        "sliding_intervals": sol.num_sliding_intervals,
        "max_rel_z_param_vs_intrinsic_flow": max(errors["flow"], default=None),
        "max_rel_velocity_gap_on_sliding": max(errors["velocity"], default=None),
        "intrinsic_skipped": sol.intrinsic_skipped,
        "chattering": None if sol.chattering is None else sol.chattering.message,
        "intervals": [
            {
                "start": iv.start,
                "end": iv.end,
                "changed": [list(e) for e in iv.changed],
                "sliding": [list(e) for e in iv.sliding],
                "gate_range": iv.gate_range,
                "intrinsic_kind": iv.intrinsic_kind,
                "intrinsic_error": iv.intrinsic_error,
            }
            for iv in sol.intervals
        ],
    }


def run_small(args, X, Y, nets):
    report, curves = {}, {}
    for name, net in nets.items():
        start = time.perf_counter()
        arch = net.arch
        logger.info(
            "%s: %d edges, %d paths, %d hidden", name, arch.num_edges, arch.num_paths,
            len(arch.hidden),
        )  # fmt: skip
        sol = relu.train(net, X, Y, args.t1, saves=args.saves, rtol=args.tol, atol=args.tol)
        entry = interval_summary(sol)
        if sol.intrinsic_skipped is None:
            mk, drift = diagnostics(net, sol)
            entry["max_rel_M_minus_K"] = float(jnp.max(mk))
            entry["max_rel_conservation_drift"] = float(jnp.max(drift))
        entry.update(
            edges=arch.num_edges,
            paths=arch.num_paths,
            hidden=len(arch.hidden),
            loss_initial=float(sol.losses[0, 0]),
            loss_final=float(sol.losses[-1, -1]),
            seconds=time.perf_counter() - start,
        )
        report[name] = entry
        curves[name] = sol
        logger.info(
            "%s: stop %s at t = %.4g, %d pattern changes, %d sliding intervals, %.1f s",
            name, entry["stop_reason"], entry["t_final"], entry["pattern_changes"],
            entry["sliding_intervals"], entry["seconds"],
        )  # fmt: skip
    return report, curves


class OnSamples(eqx.Module):
    """A ReLU network seen through its outputs on the samples, for
    `node_flow.gradient_descent`: `lift()` is $f_\\theta(X)$, so the square loss of the
    outputs is the training loss; the samples sit behind `stop_gradient` (zero gradient:
    descent leaves them unchanged)."""

    net: relu.MLP
    X: jax.Array

    def lift(self):
        return jax.vmap(self.net)(jax.lax.stop_gradient(self.X))


class OutputLoss(eqx.Module):
    r"""$\ell(\hat y) = \frac{1}{2N}\sum_i \|\hat y_i - y_i\|^2$ (the loss of `relu.train`)."""

    Y: jax.Array

    def __call__(self, outputs):
        return jnp.sum((outputs - self.Y) ** 2) / (2 * self.Y.shape[0])


def descent_end(net, X, Y, lr, t1):
    """`nf.gradient_descent` with jax.nn.relu's ReLU'(0) = 0 for round(t1/lr) steps, saving
    only the start and the end; returns the final edge weights."""
    steps = int(round(t1 / lr))
    loss = OutputLoss(Y)
    sol = nf.gradient_descent(OnSamples(net, X), loss, lr, steps, save_every=steps)
    final = jax.tree.map(lambda x: x[-1], sol.models)
    return final.net.edge_weights(), float(sol.losses[-1])


def run_large(args):
    net, X, Y = make_large(jr.key(args.seed + 1))
    start, cpu = time.perf_counter(), time.process_time()
    sol = relu.train(
        net, X, Y, args.large_t1, saves=2, rtol=args.large_tol, atol=args.large_tol,
        intrinsic=False, max_intervals=args.large_max_intervals,
    )  # fmt: skip
    # Wall time on a shared machine overstates the cost; the process CPU time (both cores
    # together) is recorded too.
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    entry = interval_summary(sol)
    entry.update(LARGE, t1=args.large_t1, tol=args.large_tol)
    entry.update(seconds=seconds, cpu_seconds=cpu_seconds, load_average=os.getloadavg())
    entry["loss_initial"] = float(sol.losses[0, 0])
    entry["loss_final"] = float(sol.losses[-1, -1])
    losses = np.asarray(sol.losses[:, -1])
    ends = np.asarray(sol.boundaries[1:])
    late = ends >= 0.8 * ends[-1]
    entry["loss_change_last_20_percent"] = float(losses[late][0] - losses[-1])
    brief = {k: v for k, v in entry.items() if k not in ("pattern_change_times", "intervals")}
    logger.info("large: %s", brief)
    if entry["stop_reason"] == "t1":
        entry["gradient_descent"] = compare_descent(net, X, Y, sol, args.large_t1)
    return entry, sol


def compare_descent(net, X, Y, sol, t1):
    """The flow's end point against gradient descent at each of `GD_STEPS`: relative
    distances of the weights and of the outputs, and their fitted order in the step."""
    theta_gf = jnp.concatenate([w[-1, -1].ravel() for w in sol.models.weights])
    out_gf = jax.vmap(net.with_edge_weights(theta_gf))(X)
    rows = []
    for lr in GD_STEPS:
        t0 = time.perf_counter()
        theta_gd, loss_gd = descent_end(net, X, Y, lr, t1)
        out_gd = jax.vmap(net.with_edge_weights(theta_gd))(X)
        rows.append(
            dict(
                lr=lr,
                steps=int(round(t1 / lr)),
                loss_final=loss_gd,
                rel_theta_distance=float(
                    jnp.linalg.norm(theta_gd - theta_gf) / jnp.linalg.norm(theta_gf)
                ),
                rel_output_distance=float(
                    jnp.linalg.norm(out_gd - out_gf) / jnp.linalg.norm(out_gf)
                ),
                seconds=time.perf_counter() - t0,
            )
        )
        logger.info("large: GD %s", rows[-1])
    lrs = [r["lr"] for r in rows]
    orders = {
        key: nf.plot.loglog_fit(lrs, [r[key] for r in rows])._asdict()
        for key in ("rel_theta_distance", "rel_output_distance")
    }
    return {"steps": rows, "order": orders}


def plot(curves, path):
    """One panel per network: the loss (`nf.plot.loss`), every kink event (red: a line each
    up to 200 intervals, ticks along the top beyond) and the sliding intervals (orange)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6))
    for ax, (name, sol) in zip(np.atleast_1d(axes), curves.items()):
        flow = SimpleNamespace(ts=np.ravel(sol.ts), losses=np.ravel(sol.losses))
        nf.plot.loss(flow, ax=ax, color="k", lw=1)
        for iv in sol.intervals:
            if iv.sliding:
                ax.axvspan(iv.start, iv.end, color="tab:orange", alpha=0.3, lw=0)
        switches = np.asarray(sol.switch_times)
        if len(sol.intervals) <= 200:
            for t in switches:
                ax.axvline(float(t), color="tab:red", lw=0.6, ls="--")
        else:
            ax.plot(switches, np.ones_like(switches), "|", color="tab:red", ms=8,
                    transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
        ax.set(
            title=f"{name}: {sol.stop_reason}, {sol.num_pattern_changes} changes, "
            f"{sol.num_sliding_intervals} sliding",
            xlabel="training time t",
        )
    fig.suptitle("ReLU gradient flow: kink events (red), sliding intervals (orange)")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/relu", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    parser.add_argument("--t1", type=float, default=3.0, help="training time")
    parser.add_argument("--samples", type=int, default=12, help="number of training samples")
    parser.add_argument("--saves", type=int, default=11, help="save times per interval")
    parser.add_argument("--tol", type=float, default=1e-11, help="rtol = atol of the flows")
    parser.add_argument(
        "--large",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the 100-50-1 network on 1,000 samples and its GD comparison (default: on; "
        "--no-large skips it, for quick runs)",
    )
    parser.add_argument("--large-t1", type=float, default=2.0, help="its training time")
    parser.add_argument("--large-tol", type=float, default=1e-8, help="its rtol = atol")
    parser.add_argument("--large-max-intervals", type=int, default=20_000)
    args = parser.parse_args(argv)
    bad = []
    for name in ("t1", "tol", "large_t1", "large_tol"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            bad.append(f"--{name.replace('_', '-')} must be a finite number > 0 (got {v})")
    for name, low in (("samples", 1), ("saves", 2), ("large_max_intervals", 1)):
        if getattr(args, name) < low:
            bad.append(f"--{name.replace('_', '-')} must be ≥ {low} (got {getattr(args, name)})")
    if args.tol >= 1 or args.large_tol >= 1:
        bad.append("--tol and --large-tol must be < 1")
    if bad:
        parser.error("; ".join(bad))
    try:  # before any computation: the results must be writable
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as err:
        parser.error(f"--out {args.out!r} is not a writable directory ({err})")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("node_flow").setLevel(logging.WARNING)
    key_data, k2, k3, kd = jr.split(jr.key(args.seed), 4)
    X, Y = make_data(key_data, args.samples)
    nets = {
        "mlp_2_layers": make_mlp(k2, (2, 4, 2), (1.3, 0.6)),
        "mlp_3_layers": make_mlp(k3, (2, 3, 3, 2), (1.3, 0.6, 0.9)),
        "dag_skip": make_dag(kd),
    }
    report = {"seed": args.seed, "t1": args.t1, "samples": args.samples, "tol": args.tol}
    small, curves = run_small(args, X, Y, nets)
    report.update(small)
    if args.large:
        report["large"], curves["large"] = run_large(args)
    plot(curves, os.path.join(args.out, "relu_intrinsic.png"))
    atomic_write_json(os.path.join(args.out, "relu_intrinsic.json"), report)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
