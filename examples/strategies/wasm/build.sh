#!/bin/sh
# Build the example WebAssembly strategies and print the pinned names a routing policy uses.
# WAT needs only the wasmtime Python package (already a dependency); wat2wasm from Debian's wabt works too.
set -eu
cd "$(dirname "$0")"
PY="${PYTHON:-../../../.venv/bin/python}"
"$PY" -c 'import sys, wasmtime; open(sys.argv[2], "wb").write(wasmtime.wat2wasm(open(sys.argv[1]).read()))' \
    least_queue.wat least_queue.wasm
"$PY" -c 'import sys; from agents.strategies.wasm import wasm_spec_name; print(wasm_spec_name(sys.argv[1]))' \
    "$PWD/least_queue.wasm"
