"""ReLU networks: the metric M(θ(t)) against the intrinsic kernel K(z(t), h(θ0)) along
training, parameter flow against the intrinsic flow in z, and the activation-pattern
changes (THEORY §4).

Two- and three-layer MLPs and a DAG with skip connections, generic unbalanced
initializations, trained by gradient flow on a small regression set; see
`node_flow.relu.train`. Writes `relu_intrinsic.json` and `relu_intrinsic.png` to `--out`.

    python experiments/relu_intrinsic.py --out results/relu --seed 0 --t1 3
"""

import argparse
import json
import logging
import os
import tempfile
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import node_flow.relu as relu  # noqa: E402


logger = logging.getLogger("relu_intrinsic")

# Inputs 0, 1; constant 2; hidden 3, 4, 5; outputs 6, 7; skips 1→5, 3→6, 4→7, 0→6.
DAG_EDGES = (
    (0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4),
    (3, 5), (4, 5), (1, 5), (2, 5), (5, 6), (5, 7), (3, 6), (4, 7), (0, 6),
)  # fmt: skip


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


@eqx.filter_jit
def diagnostics(net, sol):
    """Relative ‖M(θ(t)) − K(z(t), h0)‖_F / ‖M‖_F, relative z error, h drift at every save."""
    models = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), sol.models)
    zs = sol.zs.reshape(-1, sol.zs.shape[-1])
    Ms = jax.vmap(relu.metric_matrix)(models)
    Ks = jax.vmap(lambda z: relu.intrinsic_kernel(z, sol.h0, net.arch))(zs)
    mk = jnp.linalg.norm(Ms - Ks, axis=(1, 2)) / jnp.linalg.norm(Ms, axis=(1, 2))
    zi = sol.zs_intrinsic.reshape(zs.shape)
    zerr = jnp.max(jnp.abs(zs - zi), axis=1) / jnp.max(jnp.abs(zs), axis=1)
    hs = jax.vmap(relu.conservation_laws)(models)
    drift = jnp.max(jnp.abs(hs - sol.h0), axis=1) / jnp.max(jnp.abs(sol.h0))
    return mk, zerr, drift


def closed_form_error(net, sol):
    """Two layers: THEORY §4's closed form of θ² from (z(t), h0) against θ(t)²."""
    models = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), sol.models)
    zs = sol.zs.reshape(-1, sol.zs.shape[-1])
    closed = jax.vmap(lambda z: relu.two_layer_squares(z, sol.h0, net.arch))(zs)
    true = jax.vmap(lambda m: m.edge_weights() ** 2)(models)
    return float(jnp.max(jnp.abs(closed - true) / jnp.max(true, axis=1, keepdims=True)))


def atomic_write(path, write):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/relu", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    parser.add_argument("--t1", type=float, default=3.0, help="training time")
    parser.add_argument("--samples", type=int, default=12, help="number of training samples")
    parser.add_argument("--saves", type=int, default=11, help="save times per interval")
    parser.add_argument("--tol", type=float, default=1e-11, help="rtol = atol of the flows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.makedirs(args.out, exist_ok=True)

    key_data, k2, k3, kd = jr.split(jr.key(args.seed), 4)
    X, Y = make_data(key_data, args.samples)
    nets = {
        "mlp_2_layers": make_mlp(k2, (2, 4, 2), (1.3, 0.6)),
        "mlp_3_layers": make_mlp(k3, (2, 3, 3, 2), (1.3, 0.6, 0.9)),
        "dag_skip": make_dag(kd),
    }
    report = {"seed": args.seed, "t1": args.t1, "samples": args.samples, "tol": args.tol}
    curves = {}
    for name, net in nets.items():
        start = time.perf_counter()
        logger.info("%s: %d edges, %d paths, %d hidden neurons", name, net.arch.num_edges,
                    net.arch.num_paths, len(net.arch.hidden))  # fmt: skip
        sol = relu.train(net, X, Y, args.t1, saves=args.saves, rtol=args.tol, atol=args.tol)
        mk, zerr, drift = diagnostics(net, sol)
        entry = {
            "edges": net.arch.num_edges,
            "paths": net.arch.num_paths,
            "hidden": len(net.arch.hidden),
            "h0": [float(v) for v in sol.h0],
            "pattern_change_times": [float(t) for t in sol.switch_times],
            "stop_reason": sol.stop_reason,
            "loss_initial": float(sol.losses[0, 0]),
            "loss_final": float(sol.losses[-1, -1]),
            "max_rel_M_minus_K": float(jnp.max(mk)),
            "max_rel_z_param_vs_intrinsic": float(jnp.max(zerr)),
            "max_rel_conservation_drift": float(jnp.max(drift)),
            "seconds": time.perf_counter() - start,
        }
        if net.arch.depth == 2:
            entry["max_rel_closed_form_vs_theta_sq"] = closed_form_error(net, sol)
        report[name] = entry
        curves[name] = (sol, mk, zerr)
        logger.info("%s: %s", name, json.dumps(entry))

    fig, axes = plt.subplots(2, len(nets), figsize=(4.2 * len(nets), 6.5), sharex=True)
    for j, (name, (sol, mk, zerr)) in enumerate(curves.items()):
        ts = sol.ts.ravel()
        ax = axes[0, j]
        ax.plot(ts, sol.losses.ravel(), color="k")
        for t in sol.switch_times:
            ax.axvline(float(t), color="tab:red", lw=0.8, ls="--")
        ax.set(title=name, ylabel="loss", yscale="log")
        ax = axes[1, j]
        tiny = 1e-17  # exact zeros at t0 cannot be drawn on a log scale
        ax.semilogy(ts, jnp.maximum(mk, tiny), ".", label="‖M(θ) − K(z, h0)‖/‖M‖")
        ax.semilogy(ts, jnp.maximum(zerr, tiny), ".", label="|z_param − z_intrinsic|/|z|")
        for t in sol.switch_times:
            ax.axvline(float(t), color="tab:red", lw=0.8, ls="--")
        ax.set(xlabel="training time t", ylabel="relative error")
    axes[1, 0].legend(fontsize=8)
    fig.suptitle("ReLU networks: intrinsic metric and dynamics (red: pattern changes)")
    fig.tight_layout()
    atomic_write(
        os.path.join(args.out, "relu_intrinsic.png"),
        lambda p: fig.savefig(p, dpi=120, format="png"),
    )
    plt.close(fig)

    def write_json(p):
        with open(p, "w") as f:
            json.dump(report, f, indent=2)

    atomic_write(os.path.join(args.out, "relu_intrinsic.json"), write_json)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
