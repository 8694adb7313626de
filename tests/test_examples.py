"""The README quick-start, as pasted, and every example of the documentation site
(`docs/examples/*.py`, jupytext percent scripts) run without error in their fast mode
(`NODE_FLOW_FAST=1`).

The examples run in ONE subprocess (`_RUNNER` below), one after the other with `runpy`,
so that JAX, node_flow and matplotlib are imported once (about 4 s each time on this CPU)
and every example still starts from a fresh namespace; they are marked `slow` (about 90 s
of CPU; `make docs` executes them again, strictly). The README block runs in its own
fresh interpreter, exactly as a user would paste it, in `make test`. The process gets
four host devices (`XLA_FLAGS`) because the sweep example needs them before JAX starts.
Warnings are errors inside the runner, as in the test suite. The examples check their
own claims with `assert`s (z of the two flows agree to solver tolerance, fitted rates near −1, the
criterion's verdicts), so running them is a test of those claims too.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
QUICKSTART = re.compile(r"<!-- --8<-- \[start:quickstart\] -->\s*```python\n(.*?)```", re.S)

_RUNNER = r"""
import json, runpy, sys, time, traceback, warnings
warnings.simplefilter("error")
out, paths = sys.argv[1], sys.argv[2:]
report = {}
for path in paths:
    start, cpu = time.perf_counter(), time.process_time()
    try:
        runpy.run_path(path, run_name="__main__")
        error = None
    except BaseException:
        error = traceback.format_exc()
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    report[path] = {
        "error": error,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }
    with open(out, "w") as f:
        json.dump(report, f)
"""


def readme_quickstart() -> str:
    """The fenced Python block between the quick-start snippet markers of README.md."""
    found = QUICKSTART.findall((ROOT / "README.md").read_text())
    assert len(found) == 1, "README.md must hold exactly one marked quick-start block"
    return found[0]


def _run(tmp, paths):
    """Run `paths` one after the other in one fast-mode subprocess; its report."""
    report = tmp / "report.json"
    env = dict(os.environ, NODE_FLOW_FAST="1", MPLBACKEND="Agg")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(report), *map(str, paths)],
        cwd=tmp,  # examples write nothing into the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    done = json.loads(report.read_text()) if report.exists() else {}
    return {"proc": proc, "done": done}


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README quick-start, pasted into a fresh interpreter."""
    tmp = tmp_path_factory.mktemp("readme")
    readme = tmp / "readme_quickstart.py"
    readme.write_text(readme_quickstart())
    return dict(_run(tmp, [readme]), readme=str(readme))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every example, in one fast-mode subprocess."""
    return _run(tmp_path_factory.mktemp("examples"), EXAMPLES)


def _check(runs, path):
    entry = runs["done"].get(path)
    if entry is None:
        pytest.fail(f"the runner died before finishing {path}:\n{runs['proc'].stderr[-4000:]}")
    assert entry["error"] is None, f"{path} failed in fast mode:\n{entry['error']}"


def test_readme_quickstart_runs_as_pasted(readme_run):
    _check(readme_run, readme_run["readme"])


def test_readme_quickstart_is_short():
    """The front door promises a quick-start of at most about a dozen lines."""
    lines = [line for line in readme_quickstart().splitlines() if line.strip()]
    assert len(lines) <= 14, f"the README quick-start has {len(lines)} lines"


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_fast_mode(runs, example):
    _check(runs, str(example))


def test_every_example_has_a_fast_mode():
    """Each example reads NODE_FLOW_FAST, so that this test stays short."""
    missing = [p.name for p in EXAMPLES if 'os.environ.get("NODE_FLOW_FAST")' not in p.read_text()]
    assert not missing, f"examples without a fast mode (NODE_FLOW_FAST): {missing}"
