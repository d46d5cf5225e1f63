# The two commands: `make demo` and `make test`. Both install what they need, idempotently.
SYSTEM_PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXAMPLES ?= examples/services
PYTEST_ARGS ?=

.PHONY: setup host venv test test-unprivileged demo lint bench bench-ci fuzz clean

setup: host venv

host:
	@bash scripts/setup-host.sh

# Debian's bcc lives in the system site-packages of Debian's python3, so the venv must see them.
$(VENV)/.installed: pyproject.toml | host
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

test: setup lint test-unprivileged
	$(PY) -m pytest $(PYTEST_ARGS)

# The pure layers (model, sources, l2's logic, servers) as nobody, in a venv without bcc:
# pytest -m "not kernel" (scripts/test-unprivileged.sh).
test-unprivileged:
	@bash scripts/test-unprivileged.sh

demo: setup
	$(VENV)/bin/xlb demo --check -f $(EXAMPLES)

lint: venv
	@echo "lint: ruff check + ruff format --check"
	$(VENV)/bin/ruff check controlplane tests bench
	$(VENV)/bin/ruff format --check controlplane tests bench

bench: setup
	$(PY) -m pytest bench --benchmark-only -p no:cacheprovider

# After the tests in CI: packet rates against iptables/nftables at 1 Service and the control
# plane at 10,000 Services, JSON + markdown + plots in bench/results/; fails only if xlb
# delivers less than 2x iptables (bench/ci.py). A kernel that refuses the live-frames
# generator (BPF_PROG_TEST_RUN: EPERM, seen on 6.18.44-fc-v1300) gets no north-south rows,
# and the run says so instead of failing.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

bench-ci: setup $(VENV)/.bench-installed
	$(PY) -m bench.ci

# The fuzzer's long run: 1,000,000 random and mutated frames through xdp_lb and tc_lb, each
# output judged by tests/fuzz/model.py (`make test` runs 20,000). FUZZ_SEED replays a run.
FUZZ_FRAMES ?= 1000000
fuzz: setup
	FUZZ_FRAMES=$(FUZZ_FRAMES) $(PY) -m pytest tests/fuzz -s -p no:cacheprovider

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
