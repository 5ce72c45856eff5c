"""Sans-IO continuous-batching engine: the scheduling core of the runtime emulator.

It follows the vLLM V1 scheduler: one token budget per iteration shared by decodes and chunked prefills, KV cache in
fixed-size blocks allocated on demand, FCFS admission while sequence slots and blocks allow, and preemption by
recomputation of the most recently admitted sequence when a running one needs a block that is not free. Time is
passed in; the asyncio driver in `server.py` sleeps for the durations this core computes.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from agents.emulator.kvcache import BlockPool, SeqBlocks
from agents.emulator.profiles import KV_BYTES_PER_TOKEN_8B, GpuProfile
from agents.emulator.tokenizer import root_hash


class EngineObserver(Protocol):
    """Receives engine events, e.g. to keep a runtime's Prometheus metrics."""

    def on_arrival(self, seq: Sequence) -> None: ...
    def on_first_token(self, seq: Sequence, now: float) -> None: ...
    def on_token(self, seq: Sequence, itl_s: float) -> None: ...
    def on_finished(self, seq: Sequence, now: float) -> None: ...
    def on_iteration(self, step: Step) -> None: ...
    def on_preempted(self, seq: Sequence) -> None: ...


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine."""

    req_id: str
    prompt_tokens: int
    max_tokens: int
    target_tokens: int  # tokens this request will produce (== max_tokens unless it "stops" earlier)
    arrival: float
    computed: int = 0  # tokens whose KV is in cache
    output_tokens: int = 0
    first_scheduled: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None  # stop | length | abort
    preemptions: int = 0
    token_ids: list[int] | None = None  # prompt ids: with them its full blocks are prefix-cached
    cached_tokens: int = 0  # prompt tokens found in the prefix cache when it was (last) admitted
    kv: SeqBlocks = field(default_factory=lambda: SeqBlocks(None))
    lora: str | None = None  # LoRA adapter name; its KV blocks chain from the adapter's own root hash
    lora_id: int | None = None
    # Disaggregated serving: prompt tokens whose KV a remote prefill instance computed (vLLM's do_remote_prefill);
    # they are pulled over the KV link instead of computed here (0: a local prefill).
    remote_tokens: int = 0
    transfer_s: float = 0.0  # from admission until its pulled KV had arrived (link queueing included)
    held_block_ids: list[int] = field(default_factory=list)  # its blocks when it finished (kv_transfer_params)

    def __post_init__(self) -> None:
        if self.token_ids is not None and self.kv.token_ids is None:
            self.kv.token_ids = self.token_ids
        if self.lora is not None:
            self.kv.root = root_hash(self.lora)
            self.kv.lora_id = self.lora_id

    @property
    def blocks(self) -> int:
        return len(self.kv.block_ids)

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class Step:
    """One engine iteration: how many new tokens each scheduled sequence computes, and how long it takes."""

    work: list[tuple[Sequence, int]]
    duration_s: float
    prefill_tokens: int
    decode_seqs: int

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.work)


@dataclass(slots=True)
class TokenEvent:
    seq: Sequence
    index: int  # 0-based index of the generated token
    finished: bool


@dataclass(slots=True)
class EngineConfig:
    profile: GpuProfile
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    kv_tokens: int | None = None  # override of the profile's KV capacity
    enable_prefix_caching: bool = True
    max_loras: int = 0  # LoRA adapters resident on the GPU at once (0: LoRA off); a batch uses at most this many
    lora_load_s: float | None = None  # time to load an adapter into a slot (None: the profile's)
    kv_link_bytes_s: float = 12.5e9  # bandwidth of the link remote KV is pulled over (100 Gbit/s)
    kv_bytes_per_token: int = KV_BYTES_PER_TOKEN_8B

    @property
    def num_blocks(self) -> int:
        tokens = self.kv_tokens if self.kv_tokens is not None else self.profile.kv_tokens
        return tokens // self.block_size


@dataclass(slots=True)
class EngineCounters:
    requests: int = 0
    finished: int = 0
    aborted: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0  # prompt tokens computed (recomputation after preemption included)
    generation_tokens: int = 0
    iterations: int = 0
    busy_s: float = 0.0
    lora_loads: int = 0  # adapters loaded into a GPU slot
    lora_evictions: int = 0  # adapters evicted from a slot to make room for another
    kv_transfers: int = 0  # remote prefills whose KV was pulled here
    kv_transfer_bytes: int = 0
    kv_transfer_s: float = 0.0  # summed over the transfers, link queueing included


class _NullObserver:
    def on_arrival(self, seq: Sequence) -> None:
        pass

    def on_first_token(self, seq: Sequence, now: float) -> None:
        pass

    def on_token(self, seq: Sequence, itl_s: float) -> None:
        pass

    def on_finished(self, seq: Sequence, now: float) -> None:
        pass

    def on_iteration(self, step: Step) -> None:
        pass

    def on_preempted(self, seq: Sequence) -> None:
        pass


class EngineCore:
    """Waiting queue, running batch and block allocator. Call `schedule`, wait `duration_s`, then `complete`."""

    def __init__(self, config: EngineConfig, observer: EngineObserver | None = None) -> None:
        if config.num_blocks <= 0:
            raise ValueError(f"profile {config.profile.name} leaves no room for the KV cache")
        self.config = config
        self.observer: EngineObserver = observer or _NullObserver()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv = BlockPool(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.counters = EngineCounters()
        self._by_id: dict[str, Sequence] = {}
        # adapters resident in the GPU's LoRA slots, least recently used first
        self.loras: OrderedDict[str, None] = OrderedDict()
        self.lora_load_s = config.lora_load_s if config.lora_load_s is not None else config.profile.lora_load_s
        # Sequences whose remote KV is on its way, with the time it will have arrived. The pull runs beside the
        # iterations (NIXL reads into blocks reserved at admission); one link, so pulls queue behind each other.
        self.transferring: list[tuple[float, Sequence]] = []
        self._link_free_at = 0.0
        self.now = 0.0  # latest time the driver told the core (schedule / complete)

    # -- requests --------------------------------------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.config.num_blocks * self.config.block_size

    def add(self, seq: Sequence) -> None:
        if seq.req_id in self._by_id:
            raise ValueError(f"duplicate request id {seq.req_id!r}")
        if seq.prompt_tokens < 1 or seq.target_tokens < 1:
            raise ValueError("a request needs at least one prompt token and one output token")
        if seq.lora is not None and self.config.max_loras < 1:
            raise ValueError(f"LoRA adapter {seq.lora!r} requested but LoRA is not enabled on this engine")
        if seq.prompt_tokens + seq.target_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({seq.prompt_tokens}) + output ({seq.target_tokens}) tokens exceed the KV capacity "
                f"of {self.max_model_len} tokens"
            )
        self._by_id[seq.req_id] = seq
        self.waiting.append(seq)
        self.counters.requests += 1
        self.observer.on_arrival(seq)

    def abort(self, req_id: str, now: float) -> bool:
        """Drop a request wherever it is; True when it was still in the engine."""
        seq = self._by_id.pop(req_id, None)
        if seq is None:
            return False
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        else:
            self.transferring = [(at, s) for at, s in self.transferring if s is not seq]
        self._free(seq)
        seq.finish_reason = "abort"
        seq.finished_at = now
        self.counters.aborted += 1
        self.observer.on_finished(seq, now)
        return True

    @property
    def free_blocks(self) -> int:
        return self.kv.num_free

    @property
    def kv_usage(self) -> float:
        return self.kv.usage

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.transferring)

    def next_arrival(self) -> float | None:
        """When the next pulled KV arrives (None: nothing in flight): an idle driver wakes then."""
        return min((at for at, _ in self.transferring), default=None)

    def _arrived(self, now: float) -> None:
        """Sequences whose remote KV is in: they join the batch with the prompt computed but its last token, which
        is recomputed here for its logits (as vLLM's scheduler does after a remote prefill)."""
        keep: list[tuple[float, Sequence]] = []
        for at, seq in self.transferring:
            if at <= now:
                seq.computed = min(seq.remote_tokens, seq.prompt_tokens - 1)
                self.running.append(seq)
            else:
                keep.append((at, seq))
        self.transferring = keep

    def _pull(self, seq: Sequence, start: int, now: float) -> None:
        """Start pulling the remote KV of `seq` beyond its `start` locally cached tokens."""
        nbytes = (seq.remote_tokens - start) * self.config.kv_bytes_per_token
        done = max(now, self._link_free_at) + nbytes / self.config.kv_link_bytes_s
        self._link_free_at = done
        seq.transfer_s = done - now
        self.transferring.append((done, seq))
        c = self.counters
        c.kv_transfers += 1
        c.kv_transfer_bytes += nbytes
        c.kv_transfer_s += seq.transfer_s

    # -- iterations ------------------------------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> Step | None:
        """Plan the next iteration, or None when there is nothing to do. `now` matters only to pulls of remote KV
        (default: the time of the last completed iteration)."""
        self.now = now = self.now if now is None else max(self.now, now)
        if self.transferring:
            self._arrived(now)
        budget = self.config.max_num_batched_tokens
        work: list[tuple[Sequence, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.context - seq.computed, budget)
            while not self._reserve(seq, n):
                victim = self.running.pop()  # the most recently admitted one goes back to the queue
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.done or seq not in self.running:
                continue  # it was preempted itself; `i` already points past the end
            work.append((seq, n))
            budget -= n
            i += 1
        lora_load_s = 0.0
        if not preempted:
            skipped: list[Sequence] = []  # waiting for a LoRA slot: later requests may go ahead of them
            slots = self.config.max_num_seqs
            while self.waiting and budget > 0 and len(self.running) + len(self.transferring) < slots:
                seq = self.waiting[0]
                load = self._lora_slot(seq) if seq.lora is not None else 0.0
                if load is None:
                    skipped.append(self.waiting.popleft())  # every slot serves a running adapter
                    continue
                hit = self.kv.lookup(seq.kv, seq.prompt_tokens) if seq.computed == 0 else []
                start = seq.computed + len(hit) * self.config.block_size
                if seq.remote_tokens > start:
                    # KV computed by a remote prefill: blocks for it now, the pull beside the iterations
                    if not self.kv.admit(seq.kv, hit, seq.remote_tokens, seq.prompt_tokens):
                        if load:
                            self._lora_unload(seq.lora)
                        break
                    seq.computed = seq.cached_tokens = start
                    self.waiting.popleft()
                    self._pull(seq, start, now)
                    continue
                n = min(seq.context - start, budget)
                if not self.kv.admit(seq.kv, hit, start + n, seq.prompt_tokens):
                    if load:
                        self._lora_unload(seq.lora)  # not admitted after all
                    break  # head-of-line: FCFS keeps later requests behind it
                lora_load_s += load
                seq.computed = start
                seq.cached_tokens = len(hit) * self.config.block_size
                self.waiting.popleft()
                self.running.append(seq)
                work.append((seq, n))
                budget -= n
            self.waiting.extendleft(reversed(skipped))
        if not work:
            return None
        prefill = sum(n for s, n in work if s.context - s.computed > 1)
        decodes = sum(1 for s, n in work if s.context - s.computed == 1)
        context = sum(s.computed for s, _ in work)
        profile = self.config.profile
        duration = prefill / profile.prefill_tok_s
        if decodes:
            duration += profile.decode_step_s(decodes, context)
        else:
            duration += profile.ttft_fixed_s
        duration += lora_load_s
        return Step(work=work, duration_s=duration, prefill_tokens=prefill, decode_seqs=decodes)

    def complete(self, step: Step, now: float) -> list[TokenEvent]:
        """Apply a planned iteration that ended at `now`; returns the tokens it produced."""
        events: list[TokenEvent] = []
        self.now = max(self.now, now)
        self.counters.iterations += 1
        self.counters.busy_s += step.duration_s
        for seq, n in step.work:
            if seq.done or seq not in self.running:
                continue  # aborted or preempted while the step ran
            if seq.first_scheduled is None:
                seq.first_scheduled = now - step.duration_s
            if seq.context - seq.computed > 1:
                self.counters.prompt_tokens += n
            seq.computed += n
            self.kv.commit(seq.kv, seq.computed)
            if seq.computed < seq.context:
                continue  # a prefill chunk; more chunks to go
            seq.output_tokens += 1
            self.counters.generation_tokens += 1
            if seq.first_token_at is None:
                seq.first_token_at = now
                self.observer.on_first_token(seq, now)
            elif seq.last_token_at is not None:
                self.observer.on_token(seq, now - seq.last_token_at)
            seq.last_token_at = now
            finished = seq.output_tokens >= seq.target_tokens
            if finished:
                seq.finish_reason = "length" if seq.target_tokens >= seq.max_tokens else "stop"
                seq.finished_at = now
                self.running.remove(seq)
                self._by_id.pop(seq.req_id, None)
                seq.held_block_ids = list(seq.kv.block_ids)
                self._free(seq)
                self.counters.finished += 1
                self.observer.on_finished(seq, now)
            events.append(TokenEvent(seq=seq, index=seq.output_tokens - 1, finished=finished))
        self.observer.on_iteration(step)
        return events

    # -- LoRA slots ------------------------------------------------------------------------------------------
    def _lora_slot(self, seq: Sequence) -> float | None:
        """Make `seq`'s adapter resident: 0.0 when it already is, the load time when it is loaded now (evicting the
        least recently used adapter no running sequence uses), None when every slot serves a running sequence."""
        name = seq.lora
        assert name is not None
        if name in self.loras:
            self.loras.move_to_end(name)
            return 0.0
        if len(self.loras) >= self.config.max_loras:
            busy = {s.lora for s in self.running}
            victim = next((a for a in self.loras if a not in busy), None)
            if victim is None:
                return None
            del self.loras[victim]
            self.counters.lora_evictions += 1
        self.loras[name] = None
        self.counters.lora_loads += 1
        return self.lora_load_s

    def _lora_unload(self, name: str | None) -> None:
        if name is not None:
            self.loras.pop(name, None)

    def lora_adapters(self) -> tuple[list[str], list[str]]:
        """(adapters of running sequences, adapters of waiting ones), each sorted: vllm:lora_requests_info."""
        running = sorted({s.lora for s in self.running if s.lora is not None})
        waiting = sorted({s.lora for s in self.waiting if s.lora is not None})
        return running, waiting

    # -- blocks ----------------------------------------------------------------------------------------------
    def _reserve(self, seq: Sequence, new_tokens: int) -> bool:
        need = math.ceil((seq.computed + new_tokens) / self.config.block_size) - seq.blocks
        if need > self.kv.num_free:
            return False
        if need > 0:
            self.kv.allocate(seq.kv, need)
        return True

    def _free(self, seq: Sequence) -> None:
        self.kv.release(seq.kv)

    def _preempt(self, seq: Sequence) -> None:
        self._free(seq)
        seq.computed = 0  # recomputation: prompt and output so far are prefilled again
        seq.remote_tokens = 0  # here: the remote blocks are not pulled twice
        seq.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(seq)
        self.observer.on_preempted(seq)


@dataclass(slots=True)
class EngineSnapshot:
    running: int
    waiting: int
    kv_usage: float
    free_blocks: int
    num_blocks: int
    counters: EngineCounters = field(default_factory=EngineCounters)


def snapshot(core: EngineCore) -> EngineSnapshot:
    return EngineSnapshot(
        running=len(core.running),
        waiting=len(core.waiting),
        kv_usage=core.kv_usage,
        free_blocks=core.free_blocks,
        num_blocks=core.config.num_blocks,
        counters=core.counters,
    )
