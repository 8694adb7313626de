"""Small utilities shared by the experiments: command-line checks, a resumable result store,
a progress bar, and log–log slope fits. Never imported by the package. Files are written
with the package's one atomic writer, `node_flow._io`.

Importing it turns on the persistent compilation cache in `<repository>/.cache/jax`
(`node_flow.enable_compilation_cache`; `NODE_FLOW_CACHE_DIR` moves it, `=off` disables
it), so that a second run of a study reuses the compiled flows of the first."""

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from node_flow import enable_compilation_cache
from node_flow._io import atomic_write_json
from node_flow.plot import loglog_fit


CACHE_DIR = enable_compilation_cache(Path(__file__).resolve().parents[1] / ".cache" / "jax")


# --- command-line checks: a bad flag is refused by argparse, naming it, before computing ----


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a{'n integer' if kind is int else ' number'}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not finite")
    return value


def integer(low: int):
    """An argparse type: an integer ≥ `low`."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {low}; got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number."""
    return _number(text, float)


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {value:g}")
    return value


def tolerance(text: str) -> float:
    """An argparse type: a solver tolerance in (0, 1)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a tolerance in (0, 1); got {value:g}")
    return value


def distinct(parser: argparse.ArgumentParser, flag: str, values) -> None:
    """Refuse repeated values of a list flag."""
    if values is not None and len(set(values)) != len(values):
        parser.error(f"argument {flag}: repeated values {list(values)}; give each once")


def check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Refuse an `--out` folder that cannot be created or written, before any computation."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        parser.error(f"argument --out: cannot write to {out} ({e}); choose a writable folder")


# --- results ---------------------------------------------------------------------------------


class ResultStore:
    """Finished entries of a study, one JSON file each under `out/runs/`, keyed by name and
    tagged with a hash of exactly what the entry depends on: an interrupted run resumes from
    the entries it finished; an entry whose inputs changed is recomputed, and changing
    anything else (post-processing flags, the list of other entries) recomputes nothing."""

    def __init__(self, out: Path):
        self.dir = Path(out) / "runs"

    @staticmethod
    def tag(depends_on: dict) -> str:
        blob = json.dumps(depends_on, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def get(self, name: str, depends_on: dict):
        path = self.dir / f"{name}.json"
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return entry.get("data") if entry.get("config") == self.tag(depends_on) else None

    def put(self, name: str, depends_on: dict, data) -> None:
        entry = {"config": self.tag(depends_on), "depends_on": depends_on, "data": data}
        atomic_write_json(self.dir / f"{name}.json", entry)


class Progress:
    """A progress bar on stderr (tqdm): `step(note)` after each finished task."""

    def __init__(self, total: int, label: str):
        self._bar = tqdm(total=total, desc=label, file=sys.stderr, dynamic_ncols=True)

    def step(self, note: str = "") -> None:
        self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(1)
        if self._bar.n >= self._bar.total:
            self._bar.close()


def fit_loglog(x, y) -> dict:
    """`node_flow.plot.loglog_fit` as a JSON-ready dict (`slope`, `stderr`, `intercept`,
    `points`) over the points with y > 0 (an exact zero has no logarithm; the number of
    points used is returned), NaN when fewer than two distinct x remain. Needs at least two
    distinct positive x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(np.unique(x)) < 2 or np.any(x <= 0):
        raise ValueError(
            f"fit_loglog: a log–log slope needs at least two distinct positive x; "
            f"got x = {x.tolist()}"
        )
    keep = y > 0
    if len(np.unique(x[keep])) < 2:
        nan = float("nan")
        return {"slope": nan, "stderr": nan, "intercept": nan, "points": int(keep.sum())}
    fit = loglog_fit(x[keep], y[keep])
    return {
        "slope": fit.slope,
        "stderr": fit.stderr,
        "intercept": fit.intercept,
        "points": fit.num_points,
    }


def slope_text(fit: dict) -> str:
    """`-1.002 ± 0.003`, `-1.002 (2 points, no error estimate)`, or why there is no slope."""
    if math.isnan(fit["slope"]):
        return f"none (only {fit['points']} positive value(s) to fit)"
    if math.isnan(fit["stderr"]):
        return f"{fit['slope']:.3f} ({fit['points']} points, no error estimate)"
    return f"{fit['slope']:.3f} ± {fit['stderr']:.3f}"
