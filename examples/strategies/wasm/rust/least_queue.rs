//! least_queue for InferMesh in Rust, strategy ABI version 1 (docs/parts/strategies.md), on the guest SDK in
//! `infermesh_strategy.rs`. `#![no_std]`, no allocator and no imports: the host grants none. Build with `./build.sh`.
#![no_std]

#[path = "infermesh_strategy.rs"]
mod infermesh_strategy;

use core::panic::PanicInfo;
use infermesh_strategy::{known, Request, Target};

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// (waiting + running + inflight) / max_concurrency; lower is better.
fn score(t: &Target, _request: &Request) -> f64 {
    let cap = if t.max_concurrency > 0.0 { t.max_concurrency } else { 1.0 };
    (known(t.waiting) + known(t.running) + t.inflight) / cap
}

export_strategy!(score);
