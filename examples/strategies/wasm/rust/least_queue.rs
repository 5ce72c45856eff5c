//! least_queue for InferMesh in Rust, strategy ABI version 1 (docs/parts/strategies.md).
//!
//! `#![no_std]`, no allocator and no imports: the host grants none. Build with `./build.sh` (Debian's rustc and
//! its wasm32 standard library). Score = (waiting + running + inflight) / max_concurrency, lower is better.
#![no_std]

use core::panic::PanicInfo;

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

const ABI_VERSION: i32 = 1;
const HEADER_BYTES: usize = 32;
const MAX_TARGETS: usize = 1100; // the host hands at most 1024 candidates

/// One candidate as the host writes it (64 bytes, little-endian; NaN = unknown).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Target {
    pub waiting: f64,
    pub running: f64,
    pub max_concurrency: f64,
    pub inflight: f64,
    pub kv_cache_usage: f64,
    pub ewma_ttft_s: f64,
    pub error_rate: f64,
    pub flags: u32,
    pub reserved: u32,
}

/// One answer entry: candidate index and its score.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Entry {
    pub index: u32,
    pub reserved: u32,
    pub score: f64,
}

#[repr(C, align(8))]
struct Input([u8; HEADER_BYTES + MAX_TARGETS * 64]);
#[repr(C)]
struct Answer {
    count: u32,
    reserved: u32,
    entries: [Entry; MAX_TARGETS],
}

// Guest-owned buffers: the host writes the input into INPUT (handed out by `alloc`) and reads ANSWER after `rank`.
static mut INPUT: Input = Input([0; HEADER_BYTES + MAX_TARGETS * 64]);
static mut ANSWER: Answer = Answer { count: 0, reserved: 0, entries: [Entry { index: 0, reserved: 0, score: 0.0 }; MAX_TARGETS] };
static mut SCORES: [f64; MAX_TARGETS] = [0.0; MAX_TARGETS];

fn known(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x }
}

fn score(t: &Target) -> f64 {
    let cap = if t.max_concurrency > 0.0 { t.max_concurrency } else { 1.0 };
    (known(t.waiting) + known(t.running) + t.inflight) / cap
}

#[no_mangle]
pub extern "C" fn infermesh_abi_version() -> i32 {
    ABI_VERSION
}

#[no_mangle]
pub extern "C" fn alloc(size: i32) -> i32 {
    unsafe {
        if size < 0 || size as usize > INPUT.0.len() {
            return 0; // the host treats a null buffer as a malformed answer and falls back
        }
        INPUT.0.as_ptr() as i32
    }
}

#[no_mangle]
pub extern "C" fn rank(ptr: i32, _len: i32) -> i32 {
    unsafe {
        let head = ptr as *const u32;
        let n = (*head.add(1) as usize).min(MAX_TARGETS);
        let k = (*head.add(2) as usize).min(n);
        let targets = (ptr as usize + HEADER_BYTES) as *const Target;
        for i in 0..n {
            SCORES[i] = score(&*targets.add(i));
        }
        for j in 0..k {
            let mut best = 0;
            for i in 1..n {
                if SCORES[i] < SCORES[best] {
                    best = i;
                }
            }
            ANSWER.entries[j] = Entry { index: best as u32, reserved: 0, score: SCORES[best] };
            SCORES[best] = f64::INFINITY; // taken
        }
        ANSWER.count = k as u32;
        &ANSWER as *const Answer as i32
    }
}
