"""Small utilities shared by the experiments: atomic writes, a resumable result store,
a progress bar, and log–log slope fits. Never imported by the package."""

import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and `os.replace`:
    a reader never sees a half-written file, even if the run is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_to_builtin))


def atomic_write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        atomic_write_text(path, "")
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _to_builtin(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def atomic_savefig(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, path)


def _to_builtin(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    return x


class ResultStore:
    """Finished entries of a study, one JSON file each under `out/runs/`, keyed by name
    and tagged with a hash of the configuration: an interrupted run resumes from the
    entries it finished; a changed configuration recomputes them."""

    def __init__(self, out: Path, config: dict):
        self.dir = Path(out) / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = json.dumps(config, sort_keys=True, default=str).encode()
        self.tag = hashlib.sha256(blob).hexdigest()[:16]

    def get(self, name: str):
        path = self.dir / f"{name}.json"
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        return entry["data"] if entry.get("config") == self.tag else None

    def put(self, name: str, data) -> None:
        atomic_write_json(self.dir / f"{name}.json", {"config": self.tag, "data": data})


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.start = total, label, 0, time.time()
        self._draw("")

    def step(self, note: str = "") -> None:
        self.done += 1
        self._draw(note)
        if self.done == self.total:
            sys.stderr.write("\n")

    def _draw(self, note: str) -> None:
        width = 28
        filled = int(width * self.done / max(self.total, 1))
        elapsed = time.time() - self.start
        bar = "█" * filled + "·" * (width - filled)
        sys.stderr.write(
            f"\r{self.label} |{bar}| {self.done}/{self.total} {elapsed:6.1f}s {note:<28}"
        )
        sys.stderr.flush()


def fit_loglog(x, y) -> dict:
    """Least-squares slope (and its standard error) of log y against log x."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    A = np.stack([lx, np.ones_like(lx)], axis=1)
    coef, res, *_ = np.linalg.lstsq(A, ly, rcond=None)
    dof = len(lx) - 2
    if dof > 0:
        sigma2 = float(np.sum((A @ coef - ly) ** 2)) / dof
        stderr = float(np.sqrt(sigma2 * np.linalg.inv(A.T @ A)[0, 0]))
    else:
        stderr = float("nan")
    return {"slope": float(coef[0]), "stderr": stderr, "intercept": float(coef[1])}
