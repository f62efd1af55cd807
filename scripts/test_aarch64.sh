#!/usr/bin/env bash
# The NEON kernels' test (tests/neon_row_dot.rs: the row products of quant/aarch64_neon.rs, the
# K-quant integer parts of quant/aarch64_neon_kquant.rs and the activation quantizers, bit for bit
# against the portable ones), cross-compiled for aarch64 on an x86-64 Debian machine and run under
# qemu-user. Uses Debian's rustc-web (1.96, whose arm64 standard library Debian
# packages; rustup's targets need a download from static.rust-lang.org) and a cross linker.
# Installs them with apt (through sudo when not root). A cold build and run take about 7 minutes
# on 2 cores.
#
# Only harness-free tests run here: on our x86 build VMs (kernel 6.18), qemu-aarch64 7.2 and 10.0
# both spin forever in glibc's pthread_create, and libtest runs each test on a new thread.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu qemu-user >/dev/null 2>&1; then
    echo "== install the aarch64 cross toolchain (Debian packages)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rustc-web libstd-rust-web-dev:arm64 \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi

export RUSTC=/usr/bin/rustc # Debian's, which has the arm64 standard library
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
echo "== cargo test -p tallow-core --test neon_row_dot (aarch64, under qemu)"
cargo test -p tallow-core --target aarch64-unknown-linux-gnu --target-dir target/aarch64 --test neon_row_dot
