# node_flow: the documented way to install, test and run the studies.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow run linear depth-limit criterion relu descent bench lint docs docs-serve clean \
	learning-times lazy-rich incremental-learning matrix-completion norms-vs-rank reproduce

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"  # dev includes the docs extra
	touch $(STAMP)

# `make test`: everything but the compile-heavy checks marked `slow` (≤ 8 min on 2 cores);
# `make test-slow`: those; CI runs both.
test: install
	$(PY) -m pytest -n auto --dist loadfile -m "not slow"

test-slow: install
	$(PY) -m pytest -n auto --dist loadfile -m slow

run: depth-limit

linear: install
	$(PY) experiments/linear_intrinsic.py

depth-limit: install
	$(PY) experiments/depth_limit.py

criterion: install
	$(PY) experiments/criterion_table.py

# Three small networks to t1 = 3, then the 100-50-1 network on 1,000 samples and its
# comparison with gradient descent; RELU_FLAGS=--no-large skips that one (quick runs).
relu: install
	$(PY) experiments/relu_intrinsic.py $(RELU_FLAGS)

descent: install
	$(PY) experiments/descent_vs_flow.py

# The peers (torch CPU, torchdiffeq, scipy) are installed here only, never by `make test`.
# completion_bench.py (against PyTorch gradient descent), criterion_scale.py (counting laws
# up to D = 20,000) and stiff_bench.py (explicit against implicit past convergence) write
# results/bench/{completion,criterion_scale,stiff}.json, whose records bench.py merges into
# results/bench/summary.json and its table.
bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/completion_bench.py
	$(PY) benchmarks/criterion_scale.py
	$(PY) benchmarks/stiff_bench.py
	$(PY) benchmarks/warm_start.py
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/sweep_bench.py --out results/bench

# The documentation site (mkdocs.yml): a strict build runs every example in docs/examples/.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Live preview; examples are cached on their text (re-run on edit, not on library changes).
docs-serve: install
	NO_MKDOCS_2_WARNING=1 NODE_FLOW_DOCS_CACHE=true $(VENV)/bin/mkdocs serve

lint: install
	$(VENV)/bin/ruff check node_flow experiments tests benchmarks docs/examples
	$(VENV)/bin/ruff format --check node_flow experiments tests benchmarks docs/examples

# .cache holds the persistent compilation cache (.cache/jax) of the studies, benchmarks and tests.
clean:
	rm -rf $(VENV) results site .cache .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Reproductions of the field (issue 14): each writes results/<name>/summary.json and a figure.
learning-times: install
	$(PY) experiments/learning_times.py

lazy-rich: install
	$(PY) experiments/lazy_rich.py

incremental-learning: install
	$(PY) experiments/incremental_learning.py

matrix-completion: install
	$(PY) experiments/matrix_completion.py

norms-vs-rank: install
	$(PY) experiments/norms_vs_rank.py

reproduce: learning-times lazy-rich incremental-learning matrix-completion norms-vs-rank
