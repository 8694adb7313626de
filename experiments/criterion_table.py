"""The kernel-inclusion criterion across architectures and initializations (`make criterion`).

For each architecture (two-layer square and rectangular, deep square L = 3…5, neural-ODE grids,
two-layer rank-one) and initialization (balanced, relaxed balanced with several λ, generic
Gaussian, a random non-isotropic conserved matrix C), at one seeded point: D, dim Lie(θ), the
number of conservation laws, dim(ker ∂φ ∩ Lie(θ)), the residual of the criterion, the verdict
and the time. Then the cost against D (two-layer square, n up to `--max-n`).

Writes `<out>/criterion_table.md`, `<out>/criterion_table.csv`, `<out>/criterion_scaling.csv`
and `<out>/criterion_heatmap.png`, each atomically.
"""

import os


# One BLAS thread: the SVDs here are mid-sized and a multi-threaded BLAS competing with XLA's
# own threads on a small shared CPU was measured 2–10× slower. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
from _study import check_out, distinct, integer, positive  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write, atomic_write_csv  # noqa: E402


logger = logging.getLogger("criterion_table")

INITS = ("balanced", "relaxed λ=0.5", "relaxed λ=-0.3", "relaxed λ=2", "gaussian", "non-iso C")
LAMBDAS = {"balanced": 0.0, "relaxed λ=0.5": 0.5, "relaxed λ=-0.3": -0.3, "relaxed λ=2": 2.0}


def _orthonormal(rng, n, k=None):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))
    return q if k is None else q[:, :k]


# --- points: THEORY §2 (linear), §3 (neural ODE), §4 (rank-one) -------------------------------


def linear_point(rng, widths, init):
    """Factors `U_j` for widths `(n_0, …, n_L)`. Relaxed balanced (square, or two layers with the
    hidden width below both outer ones): `U_j = X_{j+1} Σ_j X_j^T`, `σ_{j,k}² = a_k + c_j`,
    `c_j = (j-1) λ`, so `C_j = λ I`. Non-isotropic: `C_j` with eigenvalues spread over
    `[-0.3 λ_min(U_j U_j^T), 1]`, `U_{j+1} = X (C_j + U_j U_j^T)^{1/2}`."""
    L = len(widths) - 1
    if init == "gaussian":
        return [rng.standard_normal((o, i)) for i, o in zip(widths[:-1], widths[1:])]
    inner = widths[1:-1]
    r = min(inner)
    if init in LAMBDAS:
        lam = LAMBDAS[init]
        if len(set(inner)) != 1 or r > min(widths[0], widths[-1]):
            return None
        c = lam * np.arange(L)
        a = rng.uniform(0.5, 1.5, r) + max(0.0, -c.min())
        frames = [_orthonormal(rng, widths[0], r)]
        frames += [_orthonormal(rng, r) for _ in range(L - 1)]
        frames += [_orthonormal(rng, widths[-1], r)]
        return [frames[j + 1] @ np.diag(np.sqrt(a + c[j])) @ frames[j].T for j in range(L)]
    # non-isotropic conserved matrices, layer by layer
    Us = [rng.standard_normal((widths[1], widths[0]))]
    for j in range(1, L):
        P = Us[-1] @ Us[-1].T
        low = np.linalg.eigvalsh(P)[0]
        Q = _orthonormal(rng, widths[j])
        C = Q @ np.diag(np.linspace(-0.3 * low, 1.0, widths[j])) @ Q.T
        w, E = np.linalg.eigh(C + P)
        if widths[j + 1] < widths[j] or w[0] <= 0:
            return None
        root = E @ np.diag(np.sqrt(w)) @ E.T
        Us.append(_orthonormal(rng, widths[j + 1], widths[j]) @ root)
    return Us


def grid_point(rng, cells, n, init, *, discrete):
    """Cell values `A_k`, `h = 1/m`. Non-isotropic: `A(s) = s P`, P symmetric, so `Λ = 2P`.
    Balanced/relaxed, `discrete=True` (Euler grid = residual network): the structure-preserving
    construction of THEORY §3, `U_k = I + h A_k = X_{k+1} Σ_k X_k^T` with slowly rotating frames
    `X_k = e^{k h K}`, `σ_{k,i}² = e^{2 h d_i} + (k-1) λ h²`, exactly `C_k = λ h² I`.
    `discrete=False` (RK4 grid): the continuum construction `A = K + R S_0 R^T + (λ s / 2) I`,
    `R = e^{sK}`, sampled at the cell midpoints (Λ = λI only as m → ∞)."""
    h = 1.0 / cells
    s = (np.arange(cells) + 0.5) * h
    if init == "gaussian":
        return rng.standard_normal((cells, n, n))
    if init == "non-iso C":
        Q = _orthonormal(rng, n)
        P = Q @ np.diag(np.linspace(-0.5, 1.5, n)) @ Q.T
        return s[:, None, None] * P
    B = rng.standard_normal((n, n))
    K, lam = (B - B.T) / 2, LAMBDAS[init]
    if discrete:
        a = np.exp(2 * h * rng.uniform(-0.5, 0.5, n))
        X = [scipy.linalg.expm(k * h * K) for k in range(cells + 1)]
        U = [X[k + 1] @ np.diag(np.sqrt(a + k * lam * h**2)) @ X[k].T for k in range(cells)]
        return cells * (np.stack(U) - np.eye(n))
    S0 = np.diag(rng.uniform(-0.5, 0.5, n))
    Rs = [scipy.linalg.expm(sk * K) for sk in s]
    return np.stack([K + R @ S0 @ R.T + 0.5 * lam * sk * np.eye(n) for R, sk in zip(Rs, s)])


def rank_one_point(rng, r, n, m, init):
    """`(u_j, v_j)` with `δ_j = ‖u_j‖² − ‖v_j‖²` = λ (relaxed) or spread (non-isotropic)."""
    u, v = rng.standard_normal((r, n)), rng.standard_normal((r, m))
    if init == "gaussian":
        return u, v
    delta = np.linspace(-0.5, 1.5, r) if init == "non-iso C" else np.full(r, LAMBDAS[init])
    v = v / np.linalg.norm(v, axis=1, keepdims=True) * rng.uniform(0.7, 1.3, (r, 1))
    norm_u = np.sqrt(np.sum(v**2, axis=1) + delta)
    return u / np.linalg.norm(u, axis=1, keepdims=True) * norm_u[:, None], v


def architectures(args):
    from node_flow.criterion import liftings

    archs = {
        "two-layer square 3-3-3": ((3, 3, 3), "linear"),
        "two-layer rect 4-3-5": ((4, 3, 5), "linear"),
        "two-layer rect 5-2-4": ((5, 2, 4), "linear"),
    }
    for L in range(3, args.max_depth_linear + 1):
        archs[f"deep square L={L} n=3"] = ((3,) * (L + 1), "linear")
    for m in args.grid_cells:
        archs[f"neural-ODE grid m={m} n=2 Euler"] = ((m, 2, 1), "grid")
    for m in args.rk4_cells:
        archs[f"neural-ODE grid m={m} n=2 RK4"] = ((m, 2, 4), "grid")
    archs["rank-one r=3 3×2"] = ((3, 3, 2), "rank_one")
    out = {}
    for name, (size, kind) in archs.items():
        if kind == "linear":
            out[name] = (liftings.deep_linear(size), lambda rng, i, w=size: linear_point(rng, w, i))
        elif kind == "grid":
            m, n, order = size
            out[name] = (
                liftings.neural_ode_grid(m, n, order=order),
                lambda rng, i, s=(m, n, order): grid_point(rng, *s[:2], i, discrete=s[2] == 1),
            )
        else:
            out[name] = (
                liftings.rank_one(*size),
                lambda rng, i, s=size: rank_one_point(rng, *s, i),
            )
    return out


# --- runs -----------------------------------------------------------------------------------


def _to_theta(point):
    if isinstance(point, np.ndarray):
        return jax.device_put(point)
    return tuple(jax.device_put(np.asarray(p)) for p in point)


def run_table(args, rng):
    import node_flow.criterion as criterion

    rows = []
    archs = architectures(args)
    total, done = len(archs) * len(INITS), 0
    for arch, (phi, make_point) in archs.items():
        for init in INITS:
            done += 1
            point = make_point(rng, init)
            if point is None:
                rows.append({"architecture": arch, "init": init, "verdict": "infeasible"})
                continue
            start = time.perf_counter()
            report = criterion.kernel_inclusion(phi, _to_theta(point))
            seconds = time.perf_counter() - start
            verdict = {True: "holds", False: "fails", None: "undecided"}[report.holds]
            rows.append(
                {
                    "architecture": arch,
                    "init": init,
                    "D": report.num_params,
                    "dim_lie": report.lie.dim,
                    "laws": report.lie.num_conservation_laws,
                    "dim_intersection": report.dim_intersection,
                    "residual": report.residual,
                    "verdict": verdict,
                    "gap": report.gap,
                    "seconds": seconds,
                }
            )
            logger.info(
                "[%2d/%d] %-26s %-15s D=%-4d laws=%-3d dim∩=%-3d residual=%.2e %s (%.2fs)",
                done, total, arch, init, report.num_params, report.lie.num_conservation_laws,
                report.dim_intersection, report.residual, verdict, seconds,
            )  # fmt: skip
    return rows


def run_scaling(args, rng):
    import node_flow.criterion as criterion
    from node_flow.criterion import liftings

    rows = []
    for n in args.scaling_n:
        phi = liftings.deep_linear((n, n, n))
        theta = _to_theta(linear_point(rng, (n, n, n), "gaussian"))
        start = time.perf_counter()
        report = criterion.kernel_inclusion(phi, theta)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "n": n,
                "D": report.num_params,
                "d": n * n,
                "dim_lie": report.lie.dim,
                "laws": report.lie.num_conservation_laws,
                "laws_expected": n * (n + 1) // 2,
                "dim_intersection": report.dim_intersection,
                "brackets": report.lie.num_brackets,
                "probes": "exact" if report.probes is None else report.probes,
                "lie_seconds": report.lie.seconds,
                "total_seconds": seconds,
                "residual": report.residual,
            }
        )
        logger.info(
            "scaling n=%-3d D=%-5d laws=%d (expected %d) lie %.2fs, criterion total %.2fs",
            n, report.num_params, report.lie.num_conservation_laws, n * (n + 1) // 2,
            report.lie.seconds, seconds,
        )  # fmt: skip
        if seconds > args.time_budget:
            logger.info("stopping the scaling study: %.1fs > --time-budget", seconds)
            break
    return rows


# --- outputs --------------------------------------------------------------------------------


def _fmt(value):
    if isinstance(value, float):
        return (
            f"{value:.2e}"
            if (value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4))
            else f"{value:.3g}"
        )
    return str(value)


def _markdown_table(rows, keys) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def markdown(table, scaling, args) -> str:
    handled = max((r["D"] for r in scaling), default=0)
    keys = [
        "architecture",
        "init",
        "D",
        "dim_lie",
        "laws",
        "dim_intersection",
        "residual",
        "verdict",
        "seconds",
    ]
    skeys = [
        "n",
        "D",
        "d",
        "laws",
        "laws_expected",
        "dim_intersection",
        "brackets",
        "probes",
        "lie_seconds",
        "total_seconds",
    ]
    fit = ""
    if len(scaling) >= 3:
        D = np.array([r["D"] for r in scaling[1:]], dtype=float)
        t = np.array([r["total_seconds"] for r in scaling[1:]], dtype=float)
        slope = nf.plot.loglog_fit(D, t).slope
        fit = (
            f"Fitted cost ∝ D^{slope:.2f} over the sizes after the first (compilation included).\n"
        )
    return f"""# Kernel-inclusion criterion (THEORY §1, §2)

Seed {args.seed}. Residual = max over unit v in ker ∂φ(θ) ∩ Lie(θ) of ||∂M(θ)[v]||_F, relative
to 2 ||∂φ||_2 max ||∂²φ[v, ·]||_F (in [0, 1]); the verdict is "holds" when it is at most the
tolerance 100√ε ≈ 1.5e-6, "undecided" when a rank decision has a singular-value gap below 100.
Relaxed balanced rectangular points exist only when the hidden width is at most both outer
widths; "infeasible" marks the others. Neural-ODE grids (one explicit-Euler step per cell, i.e.
the residual network I + A_k/m) use the exactly relaxed balanced discrete construction
(C_k = λ h² I); the RK4 grid uses the continuum construction of THEORY §3 sampled at cell
midpoints (relaxed balanced only as m → ∞), and has no conservation law at all.

{_markdown_table(table, keys)}

## Cost against D (two-layer square n-n-n, Gaussian point)

Largest D handled: {handled} (Lie trace and full criterion;
time limit per size {args.time_budget:.0f}s).
{fit}
{_markdown_table(scaling, skeys)}
"""


def heatmap(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["architecture"] for r in table))
    grid = np.full((len(archs), len(INITS)), np.nan)
    labels = [["" for _ in INITS] for _ in archs]
    for r in table:
        i, j = archs.index(r["architecture"]), INITS.index(r["init"])
        if "residual" in r:
            grid[i, j] = math.log10(max(r["residual"], 1e-17))
            labels[i][j] = {"holds": "✓", "fails": "✗", "undecided": "?"}[r["verdict"]]
        else:
            labels[i][j] = "n/a"
    fig, ax = plt.subplots(figsize=(1.5 * len(INITS) + 3, 0.5 * len(archs) + 1.8))
    image = ax.imshow(grid, cmap="viridis", vmin=-17, vmax=0, aspect="auto")
    for i in range(len(archs)):
        for j in range(len(INITS)):
            ax.text(j, i, labels[i][j], ha="center", va="center", color="w", fontsize=11)
    ax.set_xticks(range(len(INITS)), INITS, rotation=30, ha="right")
    ax.set_yticks(range(len(archs)), archs)
    fig.colorbar(image, ax=ax, label="log10 residual")
    ax.set_title("Kernel-inclusion criterion: ✓ holds, ✗ fails, ? undecided")
    fig.tight_layout()
    return fig


def parse_args(argv=None):
    """The flags, each checked (and `--out` found writable) before anything is computed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/criterion"))
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--max-depth-linear", type=integer(3), default=5,
                        help="deep square L = 3..this (≥ 3)")  # fmt: skip
    parser.add_argument(
        "--grid-cells",
        type=integer(1),
        nargs="+",
        default=[4, 8],
        help="cells m of the explicit-Euler (residual) neural-ODE grids",
    )
    parser.add_argument(
        "--rk4-cells",
        type=integer(1),
        nargs="*",
        default=[3],
        help="cells m of the RK4 neural-ODE grids (costly: deep brackets)",
    )
    parser.add_argument("--scaling-n", type=integer(1), nargs="+", default=[4, 8, 16, 24, 32, 48],
                        help="two-layer widths n of the cost study (D = 2 n²)")  # fmt: skip
    parser.add_argument("--time-budget", type=positive, default=60.0,
                        help="stop the cost study after a size slower than this (s)")  # fmt: skip
    args = parser.parse_args(argv)
    for flag in ("grid_cells", "rk4_cells", "scaling_n"):
        distinct(parser, "--" + flag.replace("_", "-"), getattr(args, flag))
    check_out(parser, args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(args.seed)
    table = run_table(args, rng)
    scaling = run_scaling(args, rng)
    atomic_write_csv(args.out / "criterion_table.csv", table)
    atomic_write_csv(args.out / "criterion_scaling.csv", scaling)
    atomic_write(args.out / "criterion_table.md", markdown(table, scaling, args))
    fig = heatmap(table)
    atomic_savefig(fig, args.out / "criterion_heatmap.png", dpi=120, bbox_inches=None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
