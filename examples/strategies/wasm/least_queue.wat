;; least_queue for InferMesh, strategy ABI version 1 (docs/parts/strategies.md).
;; Score = (waiting + running + inflight) / max_concurrency (unknown counts as 0, unknown capacity as 1);
;; lower is better. The host samples the candidates; this module scores them and picks the best k.
;; Memory: the input buffer handed out by `alloc` starts at 65536 (grown on demand); the answer lives at 1024.
(module
  (memory (export "memory") 2)

  (func (export "infermesh_abi_version") (result i32) (i32.const 1))

  ;; One input buffer, reused by every call; the host asks again only when it needs a larger one.
  (func (export "alloc") (param $size i32) (result i32)
    (local $pages i32)
    (local.set $pages
      (i32.shr_u (i32.add (i32.add (local.get $size) (i32.const 65536)) (i32.const 65535)) (i32.const 16)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.const 65536))

  ;; A NaN (unknown) counts as 0.
  (func $known (param $x f64) (result f64)
    (select (local.get $x) (f64.const 0) (f64.eq (local.get $x) (local.get $x))))

  (func (export "rank") (param $ptr i32) (param $len i32) (result i32)
    (local $n i32) (local $k i32) (local $i i32) (local $j i32) (local $rec i32)
    (local $cap f64) (local $best i32) (local $bs f64) (local $s f64) (local $entry i32)
    (local.set $n (i32.load offset=4 (local.get $ptr)))
    (local.set $k (i32.load offset=8 (local.get $ptr)))
    (if (i32.gt_u (local.get $k) (local.get $n)) (then (local.set $k (local.get $n))))
    ;; score every record in place (field 0) and clear the taken mark (the reserved u32 at 60)
    (local.set $i (i32.const 0))
    (block $done
      (loop $score
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.add (i32.add (local.get $ptr) (i32.const 32)) (i32.shl (local.get $i) (i32.const 6))))
        (local.set $cap (f64.load offset=16 (local.get $rec)))
        (if (i32.eqz (f64.gt (local.get $cap) (f64.const 0))) (then (local.set $cap (f64.const 1))))
        (f64.store (local.get $rec)
          (f64.div
            (f64.add
              (f64.add (call $known (f64.load (local.get $rec))) (call $known (f64.load offset=8 (local.get $rec))))
              (f64.load offset=24 (local.get $rec)))
            (local.get $cap)))
        (i32.store offset=60 (local.get $rec) (i32.const 0))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $score)))
    ;; answer header: count, reserved
    (i32.store (i32.const 1024) (local.get $k))
    (i32.store (i32.const 1028) (i32.const 0))
    ;; selection of the k best (k is small)
    (local.set $j (i32.const 0))
    (block $picked
      (loop $pick
        (br_if $picked (i32.ge_u (local.get $j) (local.get $k)))
        (local.set $best (i32.const -1))
        (local.set $i (i32.const 0))
        (block $scanned
          (loop $scan
            (br_if $scanned (i32.ge_u (local.get $i) (local.get $n)))
            (local.set $rec (i32.add (i32.add (local.get $ptr) (i32.const 32)) (i32.shl (local.get $i) (i32.const 6))))
            (if (i32.eqz (i32.load offset=60 (local.get $rec)))
              (then
                (local.set $s (f64.load (local.get $rec)))
                (if (i32.or (i32.lt_s (local.get $best) (i32.const 0)) (f64.lt (local.get $s) (local.get $bs)))
                  (then (local.set $best (local.get $i)) (local.set $bs (local.get $s))))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $scan)))
        (local.set $rec (i32.add (i32.add (local.get $ptr) (i32.const 32)) (i32.shl (local.get $best) (i32.const 6))))
        (i32.store offset=60 (local.get $rec) (i32.const 1))
        (local.set $entry (i32.add (i32.const 1032) (i32.shl (local.get $j) (i32.const 4))))
        (i32.store (local.get $entry) (local.get $best))
        (i32.store offset=4 (local.get $entry) (i32.const 0))
        (f64.store offset=8 (local.get $entry) (local.get $bs))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $pick)))
    (i32.const 1024))
)
