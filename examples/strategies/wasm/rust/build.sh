#!/bin/sh
# Build least_queue.rs into least_queue_rs.wasm with Debian's rustc (apt-get install rustc libstd-rust-dev-wasm32;
# called by path because rustup's rustc, first on the PATH, may lack the wasm32 targets), then print its pinned name.
set -eu
cd "$(dirname "$0")"
RUSTC="${RUSTC:-/usr/bin/rustc}"
OUT="${OUT:-$PWD}"
"$RUSTC" --edition 2021 --target wasm32-unknown-unknown -O -C panic=abort --crate-type cdylib least_queue.rs \
    -o "$OUT/least_queue_rs.wasm"
PY="${PYTHON:-../../../../.venv/bin/python}"
"$PY" -c 'import sys; from agents.strategies.wasm import wasm_spec_name; print(wasm_spec_name(sys.argv[1]))' \
    "$OUT/least_queue_rs.wasm"
