"""One measurement in a fresh process: `python benchmarks/_worker.py JOB.json RESULT.json`.

The job says which tool and size; the result is a JSON record. A fresh process per
measurement keeps BLAS thread pools from competing and makes compile times honest."""

import json
import os
import sys
import time

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _problem as P  # noqa: E402


FIXED_TOL = 1e-7
FIXED_TOL_TOOLS = ("node_flow", "jax-diffrax")


def _warm(solve, tol=1e-4, t1=0.05):
    """Two short solves: the first compiles (JAX) or initializes (torch), the second is
    the steady cost; their difference is the compile time."""
    t = time.perf_counter()
    solve(tol, t1=t1)
    first = time.perf_counter() - t
    t = time.perf_counter()
    solve(tol, t1=t1)
    return max(first - (time.perf_counter() - t), 0.0)


CACHE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"
)


def _enable_x64():
    """float64, and the project's persistent compilation cache (`NODE_FLOW_CACHE_DIR`
    moves it or, `=off`, disables it; `compile_s` is then the time with the cache as found)."""
    import jax

    from node_flow import enable_compilation_cache

    jax.config.update("jax_enable_x64", True)
    enable_compilation_cache(CACHE_DIR)


def run(job: dict) -> dict:
    kind = job["kind"]
    if kind == "peak":
        n = job.get("n", 1024)
        a, b = np.random.default_rng(0).standard_normal((2, n, n))
        a @ b
        times = []
        for _ in range(job.get("reps", 7)):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return {"peak_gflops": 2 * n**3 / float(np.median(times)) / 1e9, "n": n}

    if kind in ("neural_ode", "criterion", "scale"):
        _enable_x64()
        import _nodeflow

        if kind == "scale":
            return _nodeflow.scale_costs(**job.get("args", {}))
        if kind == "neural_ode":
            return {"rows": _nodeflow.neural_ode_costs(job["ms"])}
        return {"rows": _nodeflow.criterion_costs(job["widths"])}

    prob = P.make_problem(job["L"], job["n"], job["seed"])
    if kind == "reference":
        _enable_x64()
        import _nodeflow

        out = _nodeflow.reference(prob, job["check_param"])
        np.save(job["ref_path"], out.pop("z_ref"))
        return out

    ref = np.load(job["ref_path"])
    tool = job["tool"]
    record = {"tool": tool, "L": job["L"], "n": job["n"]}
    if tool.startswith("node_flow"):
        _enable_x64()
        import _nodeflow

        solver = "dopri8" if tool.endswith("dopri8") else "tsit5"
        make = _nodeflow.intrinsic_solver if "intrinsic" in tool else _nodeflow.param_solver
        solve = make(prob, solver)
        record["solver"] = solver
    elif tool.startswith("scipy"):
        import _peers

        record["solver"] = tool.split("-")[1]
        solve = _peers.scipy_solver(prob, record["solver"])
    elif tool == "jax-diffrax":
        _enable_x64()
        import _peers

        solve = _peers.jax_diffrax_solver(prob)
        record["solver"] = "tsit5"
    elif tool == "torchdiffeq":
        import _peers

        solve = _peers.torchdiffeq_solver(prob, job["threads"])
        record["solver"] = "dopri5"
    else:
        raise ValueError(f"unknown tool {tool!r}")
    record["compile_s"] = _warm(solve)
    record.update(
        P.search_and_time(
            solve, ref, reps=job["reps"], start=job.get("start"), budget_s=job["budget_s"]
        )
    )
    if tool in FIXED_TOL_TOOLS and "tol" in record:
        # The same solve at the fixed tolerance: equal tolerances are not equal
        # accuracy (the residual model's state A = L(U − I) magnifies its errors by L).
        times, (z, nfev) = [], solve(FIXED_TOL)
        for _ in range(job["reps"]):
            t = time.perf_counter()
            solve(FIXED_TOL)
            times.append(time.perf_counter() - t)
        record["fixed_tol"] = {
            "tol": FIXED_TOL,
            "seconds": float(np.median(times)),
            "rel_err": P.rel_err(z, ref),
            "nfev": int(nfev),
        }
    if tool.startswith("node_flow") and "intrinsic" not in tool:
        _enable_x64()
        import _nodeflow

        sec = _nodeflow.vector_field_rate(prob)
        record["vf_seconds"] = sec
        record["vf_gflops"] = P.vf_flops(job["L"], job["n"]) / sec / 1e9
    return record


def main():
    job_path, result_path = sys.argv[1:3]
    with open(job_path) as f:
        job = json.load(f)
    record = run(job)
    # Imported after the measurement: node_flow imports JAX, which a peer's process must not
    # load while it is being timed.
    from node_flow._io import atomic_write_json

    atomic_write_json(result_path, record)


if __name__ == "__main__":
    main()
