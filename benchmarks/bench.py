"""Side-by-side benchmark: node_flow against SciPy `solve_ivp`, torchdiffeq and a plain
JAX + diffrax solve on the same deep-linear gradient flow, at equal accuracy, in one run
(`make bench`); then the cost of one vector-field evaluation at scale (1,000 × 1,000 matrix
completion, depth 3).

Every measurement runs in a fresh process (`_worker.py`), one after the other; the float64
matmul peak (NumPy, n = 1024) is measured at the start and the end of the same run.
Writes `summary.json`, `table.md`, `cases.csv` and `bench.png` to `--out`. `summary.json`
holds every record in one list, `records` (`tool`, `case`, `seconds`, `rel_err`, `nfev`,
`hardware`), including those of `<out>/completion.json`, `<out>/criterion_scale.json`,
`<out>/stiff.json` and `<out>/warm_start.json` when the other benchmarks
(`completion_bench.py`, `criterion_scale.py`, `stiff_bench.py`, `warm_start.py`) wrote them.
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


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _problem as P  # noqa: E402
from _hardware import hardware  # noqa: E402

from node_flow._io import (  # noqa: E402
    atomic_savefig,
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
)


logger = logging.getLogger("bench")

SIZES = ((16, 8), (128, 8), (16, 64), (1024, 8), (128, 64), (64, 256))
TOOLS = (
    "node_flow",
    "node_flow-dopri8",
    "jax-diffrax",
    "scipy-DOP853",
    "scipy-RK45",
    "torchdiffeq",
)
PEERS = ("jax-diffrax", "scipy-DOP853", "scipy-RK45", "torchdiffeq")
EXTRAS = ("intrinsic", "neural_ode", "criterion", "scale")
INTRINSIC_SIZES = ((1024, 8), (1024, 64))
CHECK_PARAM_MAX_WORK = 1024 * 8**3 * 2  # parameter-flow cross-check of the reference if L n³ ≤ this
SECONDARY_MAX_WORK = 128 * 64**3  # node_flow-dopri8 (a second solver) only up to this L n³


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="timed solves per case (median)")
    p.add_argument("--budget", type=float, default=150.0, help="seconds per case before stopping")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--sizes", type=str, default=None, help='e.g. "16x8,128x8" (L x n)')
    p.add_argument("--tools", type=str, default=",".join(TOOLS))
    p.add_argument("--no-extras", action="store_true", help="skip every extra (--extras)")
    p.add_argument(
        "--extras",
        type=str,
        default=",".join(EXTRAS),
        help="extra cases to run, among " + ",".join(EXTRAS),
    )
    p.add_argument(
        "--merge-only",
        action="store_true",
        help="measure nothing: merge the other benchmarks' records into an existing summary",
    )
    p.add_argument("--scale-n", type=int, default=1000, help="matrix size of the scale case")
    p.add_argument(
        "--scale-observed", type=int, default=100_000, help="observed entries of the scale case"
    )
    args = p.parse_args(argv)
    unknown = set(args.extras.split(",")) - set(EXTRAS) - {""}
    if unknown:
        p.error(f"argument --extras: unknown {sorted(unknown)}; choose among {', '.join(EXTRAS)}")
    return args


def run_job(job: dict, workdir: Path, timeout: float) -> dict:
    """Run one job in a fresh interpreter; a crash or a timeout becomes a note."""
    fd, job_path = tempfile.mkstemp(dir=workdir, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(job, f)
    result_path = Path(job_path).with_suffix(".out.json")
    path = [str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "_worker.py"), job_path, str(result_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"note": "skipped: over budget", "wall_s": time.perf_counter() - t}
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        logger.warning("job %s failed: %s", job, " | ".join(tail))
        return {"note": "failed: " + " | ".join(tail), "wall_s": time.perf_counter() - t}
    with open(result_path) as f:
        out = json.load(f)
    out["wall_s"] = time.perf_counter() - t
    return out


def measure(args, workdir):
    sizes = SIZES
    if args.sizes:
        sizes = tuple(tuple(int(v) for v in s.split("x")) for s in args.sizes.split(","))
    tools = tuple(args.tools.split(","))
    timeout = args.budget + 300.0
    base = {"seed": args.seed, "reps": args.reps, "budget_s": args.budget, "threads": args.threads}
    peaks = [run_job({"kind": "peak"}, workdir, 120)["peak_gflops"]]
    logger.info("float64 matmul peak (NumPy, n = 1024): %.1f GFLOP/s", peaks[0])

    references, cases, hints = {}, [], {}

    def reference(L, n):
        if (L, n) not in references:
            ref_path = str(workdir / f"ref_{L}_{n}.npy")
            job = dict(
                base,
                kind="reference",
                L=L,
                n=n,
                ref_path=ref_path,
                check_param=L * n**3 <= CHECK_PARAM_MAX_WORK,
            )
            info = run_job(job, workdir, timeout)
            info.update(L=L, n=n, ref_path=ref_path)
            references[(L, n)] = info
            logger.info(
                "reference L=%d n=%d: %s", L, n, {k: v for k, v in info.items() if k != "ref_path"}
            )
        return references[(L, n)]["ref_path"]

    def case(tool, L, n):
        job = dict(
            base, kind="case", tool=tool, L=L, n=n, ref_path=reference(L, n), start=hints.get(tool)
        )
        rec = run_job(job, workdir, timeout)
        rec.update(tool=tool, L=L, n=n)
        if "tol" in rec:
            hints[tool] = rec["tol"]
        cases.append(rec)
        logger.info(
            "%-20s L=%-5d n=%-4d %8s s  err=%s  tol=%s  nfev=%s  %s",
            tool,
            L,
            n,
            _fmt(rec.get("seconds"), ".4g"),
            _fmt(rec.get("rel_err"), ".1e"),
            _fmt(rec.get("tol"), ".0e"),
            rec.get("nfev", "-"),
            rec.get("note", ""),
        )
        return rec

    for L, n in sizes:
        for tool in tools:
            if tool == "node_flow-dopri8" and L * n**3 > SECONDARY_MAX_WORK:
                continue
            case(tool, L, n)
    extras = {}
    chosen = () if args.no_extras else tuple(args.extras.split(","))
    if "intrinsic" in chosen:
        for L, n in INTRINSIC_SIZES:
            if (L, n) not in sizes or "node_flow" not in tools:
                case("node_flow", L, n)
            case("node_flow-intrinsic", L, n)
    if "neural_ode" in chosen:
        extras["neural_ode"] = run_job(dict(kind="neural_ode", ms=[4, 8, 16, 32, 64]), workdir, 600)
    if "criterion" in chosen:
        extras["criterion"] = run_job(dict(kind="criterion", widths=[4, 8, 12, 16]), workdir, 600)
    if "scale" in chosen:
        scale = dict(n=args.scale_n, observed=args.scale_observed, seed=args.seed)
        extras["scale"] = run_job(dict(kind="scale", args=scale), workdir, 1200)
        logger.info("scale: %s", extras["scale"])
    peaks.append(run_job({"kind": "peak"}, workdir, 120)["peak_gflops"])
    logger.info("float64 matmul peak at the end: %.1f GFLOP/s", peaks[1])
    return sizes, cases, references, extras, peaks


def _case_name(L, n):
    return f"deep_linear L={L} n={n}"


def flat_records(summary, label):
    """Every measurement as one record: `tool`, `case`, `seconds`, `rel_err`, `nfev`,
    `hardware` (plus what else the case knows)."""
    out = []
    for r in summary["cases"]:
        base = {"case": _case_name(r["L"], r["n"]), "hardware": label}
        keep = ("tool", "seconds", "rel_err", "nfev", "tol", "compile_s", "note")
        out.append(base | {k: r[k] for k in keep if k in r})
        if "fixed_tol" in r:
            fixed = r["fixed_tol"]
            out.append(
                base
                | {"tool": r["tool"], "case": base["case"] + f" tol={fixed['tol']:g}"}
                | {k: fixed[k] for k in ("seconds", "rel_err", "nfev", "tol")}
            )
    scale = summary.get("scale") or {}
    if "intrinsic" in scale:
        case = (
            f"matrix_completion n={scale['n']} observed={scale['observed']} "
            f"depth={scale['depth']}: one vector-field evaluation"
        )
        for tool, key in (("node_flow-intrinsic", "intrinsic"), ("node_flow", "parameter")):
            rec = scale[key]
            out.append(
                {
                    "tool": tool,
                    "case": case,
                    "seconds": rec["seconds"],
                    "nfev": 1,
                    "hardware": label,
                }
                | {k: rec[k] for k in ("rel_err_vs_sum_form", "temp_bytes", "gemms") if k in rec}
            )
    return out


# The other benchmarks' results files.
MERGED = ("completion.json", "criterion_scale.json", "stiff.json", "warm_start.json")


def merge_records(path: Path, label) -> tuple[list, str | None]:
    """The records another benchmark wrote to `path` (a list of records, or an object with
    a `records` list), each tagged with its source; a note if unreadable."""
    if not path.exists():
        return [], None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [], f"{path.name} not merged: {e}"
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and "tool" in r and "case" in r for r in records
    ):
        return [], f"{path.name} not merged: expected a list of records with `tool` and `case`"
    hw = data.get("hardware") if isinstance(data, dict) else None
    return [{"hardware": hw or label} | r | {"source": path.name} for r in records], None


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def summarize(sizes, cases, references, extras, peaks):
    peak = max(peaks)
    for rec in cases:
        rec["peak_gflops"] = peak
        if "vf_gflops" in rec:
            rec["vf_fraction_of_peak"] = rec["vf_gflops"] / peak
        if "seconds" in rec and "nfev" in rec and rec["tool"].startswith("node_flow"):
            if "intrinsic" not in rec["tool"]:
                rec["solve_gflops"] = (
                    rec["nfev"] * P.vf_flops(rec["L"], rec["n"]) / rec["seconds"] / 1e9
                )
    best_peer = {}
    for rec in cases:
        if rec["tool"] in PEERS and "seconds" in rec:
            key = (rec["L"], rec["n"])
            if key not in best_peer or rec["seconds"] < best_peer[key]["seconds"]:
                best_peer[key] = rec
    plain = {(r["L"], r["n"]): r for r in cases if r["tool"] == "jax-diffrax" and "seconds" in r}
    for rec in cases:
        bp = best_peer.get((rec["L"], rec["n"]))
        if bp is not None and "seconds" in rec and "intrinsic" not in rec["tool"]:
            rec["best_peer"] = bp["tool"]
            rec["speedup_vs_best_peer"] = bp["seconds"] / rec["seconds"]
        jd = plain.get((rec["L"], rec["n"]))
        if jd is not None and "seconds" in rec and rec["tool"].startswith("node_flow"):
            rec["speedup_vs_jax_diffrax"] = jd["seconds"] / rec["seconds"]
    intrinsic = []
    for L, n in INTRINSIC_SIZES:
        par = next(
            (r for r in cases if r["tool"] == "node_flow" and (r["L"], r["n"]) == (L, n)), None
        )
        intr = next(
            (r for r in cases if r["tool"] == "node_flow-intrinsic" and (r["L"], r["n"]) == (L, n)),
            None,
        )
        if par and intr and "seconds" in par and "seconds" in intr:
            intrinsic.append(
                {
                    "L": L,
                    "n": n,
                    "param_s": par["seconds"],
                    "intrinsic_s": intr["seconds"],
                    "ratio": par["seconds"] / intr["seconds"],
                    "param_rel_err": par["rel_err"],
                    "intrinsic_rel_err": intr["rel_err"],
                }
            )
    refs = [{k: v for k, v in r.items() if k != "ref_path"} for r in references.values()]
    return {
        "problem": {
            "loss": "||zX - Y||^2/(2N), N = 2n",
            "init": "U_i = expm(S/L)",
            "flow": "U_i' = -(1/L) grad_{U_i} L",
            "t1": P.T1,
            "target_rel_err": P.TARGET,
            "reference": f"balanced intrinsic flow, Dopri8, rtol = atol = {P.REF_TOL}",
            "tolerances": list(P.TOLS),
            "vf_flops": "6 L n^3",
        },
        "peak_gflops": peak,
        "peak_gflops_start_end": peaks,
        "cases": cases,
        "references": refs,
        "intrinsic_vs_param": intrinsic,
        **extras,
    }


def markdown(summary):
    head = (
        "| tool | L | n | seconds | rel_err | tol | nfev | × best peer | × jax-diffrax "
        "| VF GFLOP/s | VF / peak |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in summary["cases"]:
        if "intrinsic" in r["tool"]:
            continue
        sp = r.get("speedup_vs_best_peer")
        lines.append(
            f"| {r['tool']} | {r['L']} | {r['n']} | {_fmt(r.get('seconds'), '.4g')} "
            f"| {_fmt(r.get('rel_err'), '.1e')} | {_fmt(r.get('tol'), '.0e')} | {r.get('nfev', '-')} "
            f"| {'-' if sp is None else f'{sp:.2f}'} "
            f"| {_fmt(r.get('speedup_vs_jax_diffrax'), '.2f')} | {_fmt(r.get('vf_gflops'), '.1f')} "
            f"| {_fmt(r.get('vf_fraction_of_peak'), '.0%')} |"
            + (f" {r['note']}" if r.get("note") else "")
        )
    text = head + "\n".join(lines) + "\n"
    text += f"\nfloat64 matmul peak (NumPy, n = 1024, max of start/end): {summary['peak_gflops']:.1f} GFLOP/s\n"
    if summary["intrinsic_vs_param"]:
        text += "\n| L | n | parameter flow s | intrinsic flow s | ratio | errors |\n|---:|---:|---:|---:|---:|---|\n"
        for r in summary["intrinsic_vs_param"]:
            text += (
                f"| {r['L']} | {r['n']} | {r['param_s']:.4g} | {r['intrinsic_s']:.4g} | {r['ratio']:.0f}× "
                f"| {r['param_rel_err']:.1e} / {r['intrinsic_rel_err']:.1e} |\n"
            )
    text += _fixed_tol_table(summary["cases"]) + _scale_table(summary.get("scale") or {})
    text += _merged_table([r for r in summary.get("records", []) if "source" in r])
    for name, cols in (
        ("neural_ode", ("m", "seconds", "compile_s", "nfev", "ms_per_eval")),
        ("criterion", ("n", "D", "seconds", "laws", "laws_expected")),
    ):
        rows = summary.get(name, {}).get("rows")
        if rows:
            text += f"\n{name}:\n\n| " + " | ".join(cols) + " |\n|" + "---:|" * len(cols) + "\n"
            for row in rows:
                text += (
                    "| "
                    + " | ".join(
                        _fmt(row[c], ".4g") if isinstance(row[c], float) else str(row[c])
                        for c in cols
                    )
                    + " |\n"
                )
    return text


def _fixed_tol_table(cases):
    rows = [r for r in cases if "fixed_tol" in r]
    if not rows:
        return ""
    text = (
        "\nAt the fixed tolerance rtol = atol = 1e-7 (not equal accuracy):\n\n"
        "| tool | L | n | seconds | rel_err | nfev |\n|---|---:|---:|---:|---:|---:|\n"
    )
    for r in rows:
        f = r["fixed_tol"]
        text += (
            f"| {r['tool']} | {r['L']} | {r['n']} | {f['seconds']:.4g} | {f['rel_err']:.1e} "
            f"| {f['nfev']} |\n"
        )
    return text


def _merged_table(records):
    """One table per merged file."""
    sources = dict.fromkeys(r["source"] for r in records)
    return "".join(_source_table([r for r in records if r["source"] == s]) for s in sources)


_DETAILS = ("rtol", "eta", "extrapolated", "D", "laws", "laws_expected", "min_gap",
            "peak_rss_gb", "steps", "t_reached", "loss", "test_error", "study_seconds",
            "speedup")  # fmt: skip


def _source_table(records):
    text = (
        f"\nFrom {records[0]['source']}:\n\n"
        "| tool | case | seconds | rel_err / accuracy | nfev | details |\n"
        "|---|---|---:|---:|---:|---|\n"
    )
    for r in records:
        acc = r.get("rel_err", r.get("accuracy"))
        acc = _fmt(acc, ".1e") if isinstance(acc, float) else ("-" if acc is None else acc)
        details = ", ".join(
            f"{k} {r[k]:.3g}" if isinstance(r[k], float) else f"{k} {r[k]}"
            for k in _DETAILS
            if k in r
        )
        text += (
            f"| {r['tool']} | {r['case']} | {_fmt(r.get('seconds'), '.4g')} | {acc} "
            f"| {r.get('nfev', '-')} | {details} |\n"
        )
    return text


def _scale_table(scale):
    if "intrinsic" not in scale:
        return f"\nscale: {scale.get('note', 'not run')}\n" if scale else ""
    text = (
        f"\nOne vector-field evaluation, {scale['n']} × {scale['n']} matrix completion, "
        f"{scale['observed']} observed entries, depth {scale['depth']} "
        f"(JAX float64 GEMM {scale['gemm']['gflops']:.1f} GFLOP/s in the same process):\n\n"
        "| evaluation | seconds | × one GEMM | XLA temp MB |\n|---|---:|---:|---:|\n"
    )
    for key in ("intrinsic", "parameter", "svd", "loss_gradient", "gemm"):
        r = scale[key]
        text += (
            f"| {key} | {r['seconds']:.4g} | {r.get('gemms', 1.0):.1f} "
            f"| {r.get('temp_bytes', 0) / 1e6:.0f} |\n"
        )
    text += (
        f"\nSVD share of the intrinsic evaluation: {scale['intrinsic']['svd_fraction']:.0%}; "
        f"kernel vs its sum form (eigendecompositions of zzᵀ, zᵀz): "
        f"{scale['intrinsic']['rel_err_vs_sum_form']:.1e} relative.\n"
    )
    return text


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r for r in summary["cases"] if "seconds" in r and "intrinsic" not in r["tool"]]
    sizes = list(dict.fromkeys((r["L"], r["n"]) for r in cases))
    tools = list(dict.fromkeys(r["tool"] for r in cases))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    w = 0.8 / max(len(tools), 1)
    for j, tool in enumerate(tools):
        xs, ys = [], []
        for i, s in enumerate(sizes):
            r = next((r for r in cases if r["tool"] == tool and (r["L"], r["n"]) == s), None)
            if r:
                xs.append(i + (j - (len(tools) - 1) / 2) * w)
                ys.append(r["seconds"])
        ax.bar(xs, ys, width=w, label=tool)
    ax.set_yscale("log")
    ax.set_xticks(range(len(sizes)), [f"L={L}\nn={n}" for L, n in sizes])
    ax.set_ylabel("seconds per solve (rel. error ≤ 1e-6)")
    ax.legend(fontsize=8)
    nf = [r for r in cases if r["tool"] == "node_flow" and "vf_fraction_of_peak" in r]
    ax2.bar(range(len(nf)), [100 * r["vf_fraction_of_peak"] for r in nf], color="C0")
    ax2.set_xticks(range(len(nf)), [f"{r['L']},{r['n']}" for r in nf], fontsize=8)
    ax2.set_ylabel("node_flow vector field, % of matmul peak")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120, bbox_inches=None)
    plt.close(fig)


def write_csv(cases, path):
    keys = [
        "tool",
        "L",
        "n",
        "seconds",
        "rel_err",
        "tol",
        "nfev",
        "compile_s",
        "reps",
        "speedup_vs_best_peer",
        "vf_gflops",
        "vf_fraction_of_peak",
        "peak_gflops",
        "note",
    ]
    atomic_write_csv(path, [{k: case.get(k, "") for k in keys} for case in cases])


def write_outputs(summary: dict, out: Path) -> str:
    """Merge the other benchmarks' records (`MERGED`) into `summary`, then write
    `summary.json`, `table.md`, `cases.csv` and `bench.png` atomically; returns the table."""
    hw = summary["hardware"]
    label = f"{hw['cpu']} ({hw['cores']} cores)"
    merged, summary["merge_notes"] = [], []
    for name in MERGED:
        records, note = merge_records(out / name, label)
        merged += records
        if note:
            logger.warning(note)
            summary["merge_notes"].append(note)
    summary["records"] = flat_records(summary, label) + merged
    atomic_write_json(out / "summary.json", summary)
    table = markdown(summary)
    atomic_write(out / "table.md", table)
    write_csv(summary["cases"], out / "cases.csv")
    plot(summary, out / "bench.png")
    return table


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.merge_only:
        path = args.out / "summary.json"
        if not path.exists():
            raise SystemExit(f"bench.py: --merge-only needs {path}; run bench.py without it first")
        table = write_outputs(json.loads(path.read_text()), args.out)
        logger.info("merged %s into %s\n%s", ", ".join(MERGED), path, table)
        return
    start = time.perf_counter()
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        sizes, cases, references, extras, peaks = measure(args, Path(tmp))
    summary = summarize(sizes, cases, references, extras, peaks)
    summary["total_seconds"] = time.perf_counter() - start
    summary["hardware"] = hardware()
    summary["load_average_start_end"] = [load_start, list(os.getloadavg())]
    table = write_outputs(summary, args.out)
    logger.info("done in %.0f s; wrote %s\n%s", summary["total_seconds"], args.out, table)


if __name__ == "__main__":
    main()
