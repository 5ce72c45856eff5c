//! Guest SDK for InferMesh routing strategies in Rust, strategy ABI version 1 (docs/parts/strategies.md).
//!
//! Include it as a module (`#[path = "infermesh_strategy.rs"] mod infermesh_strategy;`) of a `#![no_std]` cdylib and
//! call `export_strategy!(score)` with `fn score(&Target, &Request) -> f64` (lower is better): the macro exports
//! `infermesh_abi_version`, `alloc` and `rank`, owns the input and answer buffers and picks the best `k`.
#![allow(dead_code)]

pub const ABI_VERSION: i32 = 1;
pub const HEADER_BYTES: usize = 32;
pub const MAX_TARGETS: usize = 1100; // the host hands at most 1024 candidates

pub const FLAG_HEALTHY: u32 = 1;
pub const FLAG_WARMING: u32 = 2;
pub const FLAG_LOADED: u32 = 4;

/// What is being routed (from the input header).
#[derive(Clone, Copy)]
pub struct Request {
    pub prompt_tokens: u32,
    pub max_tokens: u32,
}

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
pub struct Input(pub [u8; HEADER_BYTES + MAX_TARGETS * 64]);

#[repr(C)]
pub struct Answer {
    pub count: u32,
    pub reserved: u32,
    pub entries: [Entry; MAX_TARGETS],
}

/// An unknown (NaN) signal counted as 0.
pub fn known(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x }
}

/// Guest-owned buffers: the host writes its input into `INPUT` (handed out by `alloc`) and reads `ANSWER`.
pub static mut INPUT: Input = Input([0; HEADER_BYTES + MAX_TARGETS * 64]);
pub static mut ANSWER: Answer =
    Answer { count: 0, reserved: 0, entries: [Entry { index: 0, reserved: 0, score: 0.0 }; MAX_TARGETS] };
pub static mut SCORES: [f64; MAX_TARGETS] = [0.0; MAX_TARGETS];

pub fn alloc(size: i32) -> i32 {
    unsafe {
        if size < 0 || size as usize > INPUT.0.len() {
            return 0; // the host counts a null buffer as a malformed answer and falls back
        }
        INPUT.0.as_ptr() as i32
    }
}

/// Score every candidate with `score` and answer the best `k`, lowest first.
pub fn rank(ptr: i32, score: fn(&Target, &Request) -> f64) -> i32 {
    unsafe {
        let head = ptr as *const u32;
        let n = (*head.add(1) as usize).min(MAX_TARGETS);
        let k = (*head.add(2) as usize).min(n);
        let request = Request { prompt_tokens: *head.add(4), max_tokens: *head.add(5) };
        let targets = (ptr as usize + HEADER_BYTES) as *const Target;
        for i in 0..n {
            SCORES[i] = score(&*targets.add(i), &request);
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

/// Export the ABI's functions for a scoring function `fn(&Target, &Request) -> f64`.
#[macro_export]
macro_rules! export_strategy {
    ($score:path) => {
        #[no_mangle]
        pub extern "C" fn infermesh_abi_version() -> i32 {
            infermesh_strategy::ABI_VERSION
        }
        #[no_mangle]
        pub extern "C" fn alloc(size: i32) -> i32 {
            infermesh_strategy::alloc(size)
        }
        #[no_mangle]
        pub extern "C" fn rank(ptr: i32, _len: i32) -> i32 {
            infermesh_strategy::rank(ptr, $score)
        }
    };
}
