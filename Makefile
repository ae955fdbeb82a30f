# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CLI    := $(BIN)/fmnist-alexnet

.PHONY: setup data browser postgres demo test lint bench clean

setup: $(STAMP) data

# torch is pinned by constraints.txt: 2.13.0 is a CPU build on this machine's disk,
# an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The real dataset: Debian's package when we are root (its files land where the CLI looks
# first), else the official mirror into ./data/FashionMNIST/raw (also looked in by default).
data: $(STAMP)
	@if $(CLI) data info >/dev/null 2>&1; then \
		echo "Fashion-MNIST found and verified"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		$(CLI) data download --to data/FashionMNIST/raw; \
	fi
	@$(CLI) data info

# Debian's chromium for the page's real-browser test (Playwright cannot fetch its own browser
# here); only `make test` needs it.
browser:
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "no /usr/bin/chromium and not root: the browser test will be skipped"; \
	fi

# Debian's PostgreSQL server for the shared tuning study's test (a throwaway cluster under
# /tmp, started and removed by the test itself); only `make test` needs it.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "postgresql found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else \
		echo "no PostgreSQL server and not root: the shared-study test will be skipped"; \
	fi

# quick fits itself to 15 minutes of training on this machine, then prints the test accuracy.
demo: setup
	$(CLI) train --preset quick

# The CPU benchmark of docs/benchmarks.md: training img/s side by side, and where a step goes.
bench: setup
	bash benchmarks/cpu_bench.sh

# Two workers: run one at a time, the tests kept two cores only about 70 % busy (imports,
# process starts and checkpoint writes run in one thread). A module's tests share a worker.
test: setup browser postgres lint
	$(BIN)/python -m pytest -n 2 --dist loadscope

# ruff on everything; mypy --strict on the package (its settings are in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
