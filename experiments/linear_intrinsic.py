r"""Deep linear networks: parameter flow against intrinsic flow (THEORY §2, claims 1–2).

Balanced, relaxed balanced (mixed-sign λ) and generic Gaussian deep linear networks of the
same width are trained side by side on one least-squares problem. For each, the parameter
flow $\dot\theta = -\nabla L$ is compared with the intrinsic flow
$\dot z = -K_L(z)[\nabla\ell(z)]$ from the same $z_0$ (the relaxed balanced kernel with the
network's own λ; the balanced kernel for the Gaussian start, where no intrinsic dynamic
exists — the mismatch is the point), together with the loss and the drift of the
conservation laws $C_j = U_{j+1}^\top U_{j+1} - U_j U_j^\top$.

Run: `make linear`, or `python experiments/linear_intrinsic.py --help`.
"""

import argparse
import logging
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _study import check_out, finite, integer, positive, Progress, tolerance  # noqa: E402
from jax.tree_util import Partial  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_json  # noqa: E402


log = logging.getLogger("linear_intrinsic")


def parse_args(argv=None):
    """The flags, each checked (and `--out` found writable) before anything is computed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=integer(2), default=4, help="number of layers L ≥ 2")
    p.add_argument("--width", type=integer(1), default=4)
    p.add_argument(
        "--lambdas",
        type=finite,
        nargs="*",
        default=None,
        help="the L − 1 imbalances of the relaxed balanced start (default: mixed signs)",
    )
    p.add_argument("--T", type=positive, default=3.0, help="training horizon")
    p.add_argument("--saves", type=integer(2), default=61, help="save points in [0, T]")
    p.add_argument("--rtol", type=tolerance, default=1e-10)
    p.add_argument("--atol", type=tolerance, default=1e-10)
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--out", type=Path, default=Path("results/linear"))
    args = p.parse_args(argv)
    if args.lambdas is not None and len(args.lambdas) != args.depth - 1:
        p.error(
            f"argument --lambdas: needs depth − 1 = {args.depth - 1} values; "
            f"got {len(args.lambdas)}"
        )
    check_out(p, args.out)
    try:
        problem(args)
    except ValueError as e:  # e.g. imbalances no relaxed balanced network has
        p.error(f"argument --lambdas: {e}")
    return args


def problem(args):
    """The imbalances, the three initial networks with their λ, and the loss."""
    L, n = args.depth, args.width
    lam = (
        np.array(args.lambdas, float)
        if args.lambdas is not None
        else 0.4 * np.cos(np.arange(L - 1) * 2.1 + 0.3)  # mixed signs
    )
    k_bal, k_rel, k_gau, k_x, k_y = jax.random.split(jax.random.key(args.seed), 5)
    widths = (n,) * (L + 1)
    starts = {
        "balanced": (nf.init.balanced(k_bal, widths, 0.9), jnp.zeros(L - 1)),
        "relaxed balanced": (nf.init.relaxed_balanced(k_rel, widths, lam, 0.9), jnp.asarray(lam)),
        "gaussian": (nf.init.gaussian(k_gau, widths, std=0.9 / n**0.5 * 1.1), jnp.zeros(L - 1)),
    }
    loss = nf.LeastSquares(
        jax.random.normal(k_x, (n, 2 * n)) / (2 * n) ** 0.5, jax.random.normal(k_y, (n, 2 * n))
    )
    return lam, starts, loss


def conservation_drift(models, net0) -> float:
    """max_t max_j |C_j(t) − C_j(0)|, relative to max(1, max_j |C_j(0)|)."""
    C0 = nf.conservation_laws(net0)
    scale = max(1.0, max(float(jnp.max(jnp.abs(C))) for C in C0))
    Ct = jax.vmap(nf.conservation_laws)(models)
    return max(float(jnp.max(jnp.abs(a - b[None]))) for a, b in zip(Ct, C0)) / scale


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.time()
    n = args.width
    lam, starts, loss = problem(args)
    ts = jnp.linspace(0.0, args.T, args.saves)
    tol = dict(rtol=args.rtol, atol=args.atol)
    bar = Progress(len(starts), "linear")
    runs, flows = {}, {}
    for name, (net, lambdas) in starts.items():
        t0 = time.time()
        param = nf.gradient_flow(net, loss, args.T, ts=ts, **tol)
        kernel = Partial(nf.kernels.relaxed_balanced, lambdas=lambdas)
        intr = nf.intrinsic_flow(net.lift(), loss, kernel, args.T, ts=ts, **tol)
        C0 = nf.conservation_laws(net)
        runs[name] = {
            "lambdas": np.asarray(lambdas).tolist(),
            "C0_offdiag_or_anisotropy": max(
                float(jnp.max(jnp.abs(C - jnp.trace(C) / n * jnp.eye(n)))) for C in C0
            ),
            "sv_param": np.linalg.svd(np.asarray(param.zs), compute_uv=False).tolist(),
            "sv_intrinsic": np.linalg.svd(np.asarray(intr.zs), compute_uv=False).tolist(),
            "loss_param": np.asarray(param.losses).tolist(),
            "loss_intrinsic": np.asarray(intr.losses).tolist(),
            "max_z_difference": float(jnp.max(jnp.abs(param.zs - intr.zs))),
            "conservation_drift_rel": conservation_drift(param.models, net),
            "steps_param": int(param.stats["num_steps"]),
            "steps_intrinsic": int(intr.stats["num_steps"]),
            "seconds": time.time() - t0,
        }
        flows[name] = (param, intr)
        bar.step(name)
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "lambdas": lam.tolist(),
        "ts": np.asarray(ts).tolist(),
        "runs": runs,
        "seconds_total": time.time() - start,
    }
    atomic_write_json(args.out / "summary.json", summary)
    plot(args, summary, flows)
    for name, r in runs.items():
        log.info(
            "%-17s max|z_param − z_intrinsic| = %.2e   conservation drift = %.1e   "
            "anisotropy of C_j = %.2e",
            name,
            r["max_z_difference"],
            r["conservation_drift_rel"],
            r["C0_offdiag_or_anisotropy"],
        )
    log.info("results in %s (%.1f s)", args.out, summary["seconds_total"])


def plot(args, summary, flows):
    """Per start: the singular values of both flows (`nf.plot.singular_values`); then the
    losses (`nf.plot.loss`) and the drift of the conservation laws along the parameter flows
    (`nf.plot.conservation`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    fig, axes = plt.subplots(1, len(runs) + 2, figsize=(5 * (len(runs) + 2), 4))
    for ax, (name, (param, intr)) in zip(axes, flows.items()):
        nf.plot.singular_values(param, ax=ax, color="C0", lw=2, alpha=0.6, label="parameter flow")
        nf.plot.singular_values(intr, ax=ax, color="C3", ls="--", lw=1.2, label="intrinsic flow")
        ax.set_title(f"{name}: max|Δz| = {runs[name]['max_z_difference']:.1e}")
    for j, (name, (param, _)) in enumerate(flows.items()):
        nf.plot.loss(param, ax=axes[-2], color=f"C{j}", label=name)
        nf.plot.conservation(param, ax=axes[-1], color=f"C{j}", label=name)
    axes[-2].set_title(f"depth {args.depth}, width {args.width}")
    axes[-1].set_title("conservation laws along the parameter flows")
    axes[-1].legend(fontsize=6)
    for ax in axes:
        ax.set_xlabel("training time t")
    fig.tight_layout()
    atomic_savefig(fig, args.out / "linear_intrinsic.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
