r"""Warm starts (issue 16): the depth-limit study of `make run`, run twice end to end.

The first run starts from an empty compilation cache (cold); the second reuses nothing but
the compiled programs the first one stored (warm: a fresh results folder, the same cache).
Each run is a separate process, `python experiments/depth_limit.py --out <folder>`, timed
from start to exit (imports, tracing, cache loads, solves, figures). The cache and both
results folders live in a temporary folder, so the user's `.cache/` and `results/` are
left alone; `NODE_FLOW_CACHE_DIR` points the study at it.

Run: `python benchmarks/warm_start.py` (about 4 minutes on 2 cores). Writes
`<out>/warm_start.json` atomically: one record per run with `tool`, `case`, `seconds`
(end to end), `study_seconds` (the study's own total) and `entries` (seconds per study
entry), the ratio cold / warm, and the hardware.
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

from _hardware import hardware


logger = logging.getLogger("warm_start")
ROOT = Path(__file__).resolve().parents[1]


def run_study(out: Path, cache: Path) -> dict:
    """One end-to-end run of the study into `out` with the compilation cache `cache`."""
    env = os.environ | {"NODE_FLOW_CACHE_DIR": str(cache)}
    cmd = [sys.executable, str(ROOT / "experiments" / "depth_limit.py"), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:  # the study's own message, not a bare CalledProcessError
        raise SystemExit(
            f"warm_start: the study failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    summary = json.loads((out / "summary.json").read_text())
    return {
        "seconds": seconds,
        "study_seconds": summary["seconds_total"],
        "entries": summary["seconds"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    args = p.parse_args(argv)
    from node_flow._io import atomic_write_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="node_flow_warm_") as tmp:
        cache = Path(tmp) / "cache"
        for case in ("cold", "warm"):
            logger.info("%s run of the depth-limit study …", case)
            r = run_study(Path(tmp) / case, cache)
            records.append({"tool": "node_flow", "case": f"warm_start/{case}"} | r)
            logger.info("%s: %.1f s end to end (study %.1f s)", case, r["seconds"],
                        r["study_seconds"])  # fmt: skip
    ratio = records[0]["seconds"] / records[1]["seconds"]
    records[1]["speedup"] = ratio
    logger.info("cold / warm = %.2f×", ratio)
    atomic_write_json(
        args.out / "warm_start.json",
        {"hardware": hardware(), "cold_over_warm": ratio, "records": records},
    )


if __name__ == "__main__":
    main()
