r"""Counting conservation laws at scale (issue 16): `deep_linear((n, n, n))`, $D = 2n^2$.

For a generic two-layer linear network the count is known in closed form,
$n(n+1)/2$ (the entries of $U_2^\top U_2 - U_1U_1^\top$; Marcotte, Gribonval & Peyré 2023).
[`node_flow.criterion.num_conservation_laws`][] switches to the structured two-layer path
([`node_flow.criterion.two_layer_conservation_laws`][]) once the dense Jacobian would not fit;
this script times it at each width, reads the peak resident memory of its own process
(`ru_maxrss`; one process per width, so each peak is that width's), and records the
certified rank gaps of the decision.

Run: `python benchmarks/criterion_scale.py` (default widths 25, 50, 100; n = 100 is
$D = 20{,}000$). Writes `<out>/criterion_scale.json` atomically: one record per width with
`tool`, `case`, `seconds`, `laws`, `laws_expected`, `peak_rss_gb`, `min_gap`.
"""

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

from _hardware import hardware


logger = logging.getLogger("criterion_scale")


def count_once(n: int, seed: int) -> dict:
    """One width, in this process: the count, its time, its smallest certified gap."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from node_flow import criterion
    from node_flow.criterion import liftings

    rng = np.random.default_rng(seed)
    phi = liftings.deep_linear((n, n, n))
    theta = tuple(jnp.asarray(rng.standard_normal((n, n))) for _ in range(2))
    start = time.perf_counter()
    laws = criterion.conservation_laws(phi, theta)
    seconds = time.perf_counter() - start
    return {
        "tool": "node_flow",
        "case": f"criterion/two_layer_n={n}",
        "n": n,
        "D": int(laws.num_params),
        "seconds": seconds,
        "laws": int(laws.count),
        "laws_expected": n * (n + 1) // 2,
        "min_gap": float(np.min(np.asarray(laws.lie.gaps))),
        "decided": bool(laws.lie.decided),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # worker mode: one width
    args = p.parse_args(argv)
    if any(n < 2 for n in args.widths):
        p.error(f"argument --widths: each width must be ≥ 2; got {args.widths}")
    if args.one is not None:
        print(json.dumps(count_once(args.one, args.seed)))
        return
    from node_flow._io import atomic_write_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for n in args.widths:
        cmd = [sys.executable, __file__, "--one", str(n), "--seed", str(args.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        records.append(json.loads(out.strip().splitlines()[-1]))
        r = records[-1]
        logger.info(
            "n = %d, D = %d: %d laws (expected %d) in %.1f s, peak %.2f GB, min gap %.3g",
            n, r["D"], r["laws"], r["laws_expected"], r["seconds"], r["peak_rss_gb"],
            r["min_gap"],
        )  # fmt: skip
    atomic_write_json(
        args.out / "criterion_scale.json", {"hardware": hardware(), "records": records}
    )


if __name__ == "__main__":
    main()
