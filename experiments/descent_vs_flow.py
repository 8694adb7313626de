r"""Gradient descent against gradient flow: first order in the learning rate (issue 13).

A deep linear network (and a linear neural ODE on a grid, with its $L^2$ metric) is trained
on one least-squares problem by [`node_flow.gradient_descent`] at learning rates
$\eta \in \{0.2, 0.1, 0.05, \dots\}$ and by [`node_flow.gradient_flow`] (tight
tolerances, saved at every $t = k\eta$). Three measurements:

1. $\max_k \|z_{GD}(k) - z_{GF}(k\eta)\|_F$ against $\eta$: explicit Euler is a first-order
   method, so the fitted slope is 1 ([`node_flow.plot.convergence`]).
2. The per-step change of each conservation law $C_j = U_{j+1}^\top U_{j+1} - U_jU_j^\top$
   against the exact identity for gradient descent on a deep linear network,
   $C_j(k+1) - C_j(k) = \eta^2 (G_{j+1}^\top G_{j+1} - G_j G_j^\top)$, $G_j = \nabla_{U_j} L$
   (REFERENCES.md; the first-order terms cancel as for the flow). $G_j$ is recomputed here
   by `jax.grad` at the saved iterates, independently of the descent's own step.
3. The accumulated drift $\max_j \|C_j(T) - C_j(0)\|_F$: $T/\eta$ steps of $O(\eta^2)$,
   so $O(\eta)$ (fitted slope 1).

Outputs in `--out` (default `results/descent/`): `descent_vs_flow.png` and `summary.json`,
written atomically; each flow and descent is cached under `--out/runs/` as it finishes, so
an interrupted run resumes (the deep linear part takes seconds; each neural-ODE descent
compiles a scan over nested diffrax solves, about a minute in all on a laptop CPU).

Run: `make descent`, or `python experiments/descent_vs_flow.py --help`.
"""

import argparse
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_json  # noqa: E402


log = logging.getLogger("descent_vs_flow")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/descent"), help="output folder")
    p.add_argument("--depth", type=int, default=3, help="layers L ≥ 2 of the deep linear net")
    p.add_argument("--width", type=int, default=3, help="width n of every layer")
    p.add_argument("--T", type=float, default=3.0, help="training time; GD runs T/η steps")
    p.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=[0.2, 0.1, 0.05, 0.025, 0.0125],
        help="learning rates η (T/η must be an integer)",
    )
    p.add_argument(
        "--fit-from",
        type=int,
        default=1,
        help="index of the first lr in the order fits (the largest lr is pre-asymptotic)",
    )
    p.add_argument("--node-cells", type=int, default=4, help="neural-ODE grid cells (0: skip)")
    p.add_argument("--rtol", type=float, default=1e-12, help="tolerance of the flow")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    validate(p, args)
    return args


def validate(p: argparse.ArgumentParser, args) -> None:
    """Every flag checked before any computation; `--out` first."""
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=args.out).close()
    except OSError as e:
        p.error(f"--out {args.out} is not a writable folder ({e.strerror}); pick another one")
    if args.depth < 2 or args.width < 1 or args.node_cells < 0:
        p.error(
            f"--depth must be ≥ 2, --width ≥ 1 and --node-cells ≥ 0; got {args.depth}, "
            f"{args.width}, {args.node_cells}"
        )
    if not (np.isfinite(args.T) and args.T > 0):
        p.error(f"--T must be positive and finite; got {args.T}")
    if not 0 < args.rtol <= 1e-6:
        p.error(f"--rtol must lie in (0, 1e-6] to resolve the O(η) gap; got {args.rtol}")
    lrs = np.asarray(args.lrs)
    if len(lrs) < 3 or len(set(args.lrs)) != len(lrs) or not np.all(np.isfinite(lrs) & (lrs > 0)):
        p.error(f"--lrs needs ≥ 3 distinct positive learning rates to fit a slope; got {args.lrs}")
    if not 0 <= args.fit_from <= len(lrs) - 2:
        p.error(f"--fit-from must leave ≥ 2 of the {len(lrs)} lrs to fit; got {args.fit_from}")
    steps = args.T / lrs
    if np.any(np.abs(steps - np.round(steps)) > 1e-9 * steps):
        p.error(f"--T / lr must be an integer for every lr (T = {args.T}, lrs = {args.lrs})")


def problem(args):
    """A planted least-squares problem, a Gaussian deep linear network and a neural ODE.

    Inputs of scale 0.3 and factors of std 0.5 keep lr · (largest Hessian eigenvalue)
    below ~0.5 at lr = 0.2, so every lr is stable and all but the largest are in the
    asymptotic regime of the first-order error (seeded)."""
    k_x, k_z, k_y, k_net, k_node = jax.random.split(jax.random.key(args.seed), 5)
    n = args.width
    X = 0.3 * jax.random.normal(k_x, (n, 2 * n))
    target = jax.random.normal(k_z, (n, n)) / n**0.5
    loss = nf.LeastSquares(X, target @ X + 0.1 * jax.random.normal(k_y, (n, 2 * n)))
    net = nf.init.gaussian(k_net, (n,) * (args.depth + 1), std=0.5)
    node = None
    if args.node_cells:
        A = 0.3 * jax.random.normal(k_node, (args.node_cells + 1, n, n)) / n**0.5
        node = nf.LinearNeuralODE(A)
    return loss, net, node


class Cache:
    """Finished entries, one JSON file each under `out/runs/`, tagged with a hash of what
    they depend on: an interrupted run resumes from them; changed flags recompute them."""

    def __init__(self, args):
        skip = ("out", "fit_from", "lrs")
        self.config = {k: v for k, v in vars(args).items() if k not in skip}
        self.dir = args.out / "runs"

    def _tag(self, extra: dict) -> str:
        blob = json.dumps(self.config | extra, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def get(self, name: str, **extra):
        try:
            entry = json.loads((self.dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return entry.get("data") if entry.get("tag") == self._tag(extra) else None

    def put(self, name: str, data, **extra):
        atomic_write_json(self.dir / f"{name}.json", {"tag": self._tag(extra), "data": data})
        return data


def flow_on_grid(model, loss, args, grid) -> dict:
    flow = nf.gradient_flow(
        model, loss, args.T, ts=jnp.asarray(grid), rtol=args.rtol, atol=args.rtol
    )
    return {"zs": np.asarray(flow.zs).tolist(), "num_steps": int(flow.stats["num_steps"])}


def descent_entry(model, loss, lr: float, args, grid, flow_zs, identity: bool) -> dict:
    """One descent: its max gap to the flow on the shared grid (and the identity)."""
    start = time.time()
    gd = nf.gradient_descent(model, loss, lr, round(args.T / lr))
    ts = np.asarray(gd.ts)
    idx = np.clip(np.searchsorted(grid, ts - 1e-9 * args.T), 0, len(grid) - 1)
    if np.max(np.abs(grid[idx] - ts)) > 1e-9 * args.T:
        raise RuntimeError(f"descent times at lr = {lr} are not on the flow's save grid")
    gap = np.linalg.norm(np.asarray(gd.zs) - flow_zs[idx], axis=(-2, -1))
    entry = {"gap": float(gap.max()), "steps": len(ts) - 1, "final_loss": float(gd.losses[-1])}
    if identity:
        entry |= conservation_identity(gd, loss, lr)
    return entry | {"seconds": time.time() - start}


def descent_vs_flow(key: str, model, loss, args, cache: Cache) -> dict:
    """One gradient flow saved at every kη, and one descent per η (each cached)."""
    lrs = sorted(args.lrs)
    grid = np.unique(np.concatenate([lr * np.arange(round(args.T / lr) + 1) for lr in lrs]))
    grid = grid[np.concatenate([[True], np.diff(grid) > 1e-12 * args.T])]
    flow = cache.get(f"{key}-flow", lrs=lrs) or cache.put(
        f"{key}-flow", flow_on_grid(model, loss, args, grid), lrs=lrs
    )
    entries = []
    for lr in args.lrs:
        name = f"{key}-lr{lr:g}"
        entry = cache.get(name, lr=lr)
        if entry is None:
            zs = np.asarray(flow["zs"])
            entry = descent_entry(model, loss, lr, args, grid, zs, key == "deep_linear")
            cache.put(name, entry, lr=lr)
        log.info(
            "%-12s lr = %-7g %4d steps  max‖z_GD − z_GF‖ = %.3e  final loss %.4f  (%.1f s)",
            key,
            lr,
            entry["steps"],
            entry["gap"],
            entry["final_loss"],
            entry["seconds"],
        )
        entries.append(entry)
    return {"entries": entries, "flow_steps": flow["num_steps"]}


def conservation_identity(gd, loss, lr: float) -> dict:
    """Per-step change of each C_j against η²(G_{j+1}ᵀG_{j+1} − G_jG_jᵀ), and its drift.

    The residual is reported relative to the predicted change, and in units of the
    round-off of forming C_j(k+1) − C_j(k) in float64, ε (‖U_{j+1}‖² + ‖U_j‖²): the
    identity is exact, so the second ratio stays O(1)–O(10) at every lr, while the first
    grows as 1/η² because the predicted change shrinks as η²."""
    steps = np.asarray(gd.steps)
    if not np.all(np.diff(steps) == 1):
        raise RuntimeError("the identity needs every step saved (save_every=1)")
    params, static = eqx.partition(gd.models, eqx.is_inexact_array)
    grad = jax.vmap(jax.grad(lambda p: loss(eqx.combine(p, static).lift())))(params)
    laws = [np.asarray(C) for C in nf.conservation_laws(gd.models)]
    G = [np.asarray(g) for g in grad.weights]
    U = [np.asarray(u) for u in gd.models.weights]
    T = lambda M: np.swapaxes(M, -1, -2)
    norm = lambda M: np.linalg.norm(M, axis=(-2, -1))
    out = {"rel": [], "roundoff": [], "change": [], "predicted": [], "drift": []}
    for j, C in enumerate(laws):
        actual = C[1:] - C[:-1]
        pred = lr**2 * (T(G[j + 1]) @ G[j + 1] - G[j] @ T(G[j]))[:-1]
        residual = norm(actual - pred)
        scale = np.finfo(C.dtype).eps * (norm(U[j + 1]) ** 2 + norm(U[j]) ** 2)
        out["rel"].append(float(residual.max() / norm(pred).max()))
        out["roundoff"].append(float(np.max(residual / np.maximum(scale[1:], scale[:-1]))))
        out["change"].append(norm(actual).tolist())
        out["predicted"].append(norm(pred).tolist())
        out["drift"].append(float(norm(C[-1] - C[0])))
    return {
        "identity_max_rel_residual": max(out["rel"]),
        "identity_max_residual_in_roundoff_units": max(out["roundoff"]),
        "step_change": out["change"],
        "step_predicted": out["predicted"],
        "drift_final": out["drift"],
    }


def fits(lrs, values, fit_from: int) -> dict:
    """The order fit over the asymptotic lrs, over all, and the local orders."""
    v = np.asarray(values)
    return {
        "fit": nf.plot.loglog_fit(lrs[fit_from:], v[fit_from:])._asdict(),
        "fit_all": nf.plot.loglog_fit(lrs, v)._asdict(),
        "local_orders": (np.log(v[:-1] / v[1:]) / np.log(lrs[:-1] / lrs[1:])).tolist(),
    }


def plot(args, summary, identity_curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs, dl = np.asarray(args.lrs), summary["families"]["deep linear"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for name, r in summary["families"].items():
        nf.plot.convergence(lrs, r["gap"], ax=axes[0], label=name, fit_from=args.fit_from)
    axes[0].set_xlabel("learning rate η")
    axes[0].set_ylabel(r"$\max_k \|z_{GD}(k) - z_{GF}(k\eta)\|_F$")
    axes[0].set_title("gradient descent → gradient flow (dashed: fit)")
    ax = axes[1]
    for i, (lr, (change, predicted)) in enumerate(zip(lrs, identity_curves)):
        t = lr * np.arange(len(change))
        ax.semilogy(t, change, "o", ms=2.5, color=f"C{i}", label=f"η = {lr:g}")
        ax.semilogy(t, predicted, "-", lw=1, color=f"C{i}")
    ax.set_xlabel("t = kη")
    ax.set_ylabel(r"$\|C_1(k+1) - C_1(k)\|_F$")
    res = max(dl["identity_max_residual_in_roundoff_units"])
    ax.set_title(f"dots: GD; lines: η²(G₂ᵀG₂ − G₁G₁ᵀ); residual ≤ {res:.0f} ε‖U‖²", fontsize=10)
    ax.legend(fontsize="small")
    nf.plot.convergence(lrs, dl["drift"], ax=axes[2], label="max_j", fit_from=args.fit_from)
    axes[2].set_xlabel("learning rate η")
    axes[2].set_ylabel(r"$\max_j \|C_j(T) - C_j(0)\|_F$")
    axes[2].set_title(f"accumulated drift of the conservation laws, T = {args.T:g}")
    fig.tight_layout()
    atomic_savefig(fig, args.out / "descent_vs_flow.png")
    plt.close(fig)


def run(args) -> tuple[dict, list]:
    """Every family: the gaps and their order; for the deep linear net, the identity."""
    loss, net, node = problem(args)
    lrs, families, curves, cache = np.asarray(args.lrs), {}, [], Cache(args)
    models = {"deep linear": net} | ({"neural ODE": node} if node is not None else {})
    for name, model in models.items():
        r = descent_vs_flow(name.replace(" ", "_"), model, loss, args, cache)
        ids = r["entries"]
        gap = [i["gap"] for i in ids]
        families[name] = {"gap": gap, "flow_steps": r["flow_steps"]}
        families[name] |= fits(lrs, gap, args.fit_from)
        if name == "deep linear":
            drift = [max(i["drift_final"]) for i in ids]
            families[name] |= {
                "identity_max_rel_residual": [i["identity_max_rel_residual"] for i in ids],
                "identity_max_residual_in_roundoff_units": [
                    i["identity_max_residual_in_roundoff_units"] for i in ids
                ],
                "drift": drift,
                "drift_fits": fits(lrs, drift, args.fit_from),
            }
            curves = [(i["step_change"][0], i["step_predicted"][0]) for i in ids]
        fit = families[name]["fit"]
        log.info("%-12s order %.3f ± %.3f", name, fit["slope"], fit["stderr"])
    return families, curves


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.time()
    families, curves = run(args)
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "families": families,
        "versions": {"jax": jax.__version__, "node_flow": nf.__version__},
        "seconds_total": time.time() - start,
    }
    plot(args, summary, curves)
    atomic_write_json(args.out / "summary.json", summary)
    dl = families["deep linear"]
    log.info(
        "identity residual ≤ %.1e relative, ≤ %.1f ε‖U‖²; drift order %.3f; results in %s (%.1f s)",
        max(dl["identity_max_rel_residual"]),
        max(dl["identity_max_residual_in_roundoff_units"]),
        dl["drift_fits"]["fit"]["slope"],
        args.out,
        summary["seconds_total"],
    )


if __name__ == "__main__":
    main()
