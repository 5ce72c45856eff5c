"""`infermesh emulate-runtime`: an OpenAI-compatible HTTP server backed by the emulated continuous-batching engine.

The asyncio driver runs the sans-IO `EngineCore`: it plans an iteration, sleeps for its modelled duration, and hands
the produced tokens to the waiting HTTP handlers. Fault injection, the runtime's own /metrics format, client
disconnect handling and trace-header recording live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import ssl
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from agents.argparsing import Parser, examples
from agents.binding import BindError, fail, join_host_port, reason_of
from agents.emulator import apis, kvtransfer
from agents.emulator import tokenizer as tok
from agents.emulator.engine import EngineConfig, EngineCore, TokenEvent
from agents.emulator.engine import Sequence as Seq
from agents.emulator.kvcache import AllBlocksCleared
from agents.emulator.kvevents import KVEventPublisher
from agents.emulator.metrics import FLAVORS, RuntimeMetrics
from agents.emulator.profiles import GpuProfile, get_profile, profile_names

log = logging.getLogger("infermesh.emulator")
_warned: set[str] = set()


def _warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning("%s", message)


# A small vocabulary: the text is filler, only the token count and timing matter.
_WORDS = (  # noqa: SIM905
    "the mesh routes tokens to a warm replica while queues drain and caches fill under steady load across"
    " many nodes so every request finds capacity near its data with low latency and fair share for each tenant"
).split()
_OWNER = {"vllm": "vllm", "vllm-v0": "vllm", "tgi": "tgi", "triton": "triton", "sglang": "sglang"}


class BadRequest(ValueError):
    """A request the OpenAI API would refuse with 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Faults:
    """Injected faults. slowdown multiplies iteration time; error_rate fails that share of requests with 500."""

    slowdown: float = 1.0
    error_rate: float = 0.0
    hang: bool = False

    def update(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("the fault body must be a JSON object")
        unknown = set(body) - {"slowdown", "error_rate", "hang", "crash", "reset"}
        if unknown:
            raise BadRequest(f"unknown fault field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
        if body.get("reset"):
            self.slowdown, self.error_rate, self.hang = 1.0, 0.0, False
        if "slowdown" in body:
            v = body["slowdown"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise BadRequest("slowdown must be a positive number (1.0 = normal speed)", param="slowdown")
            self.slowdown = float(v)
        if "error_rate" in body:
            v = body["error_rate"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise BadRequest("error_rate must be a number between 0 and 1", param="error_rate")
            self.error_rate = float(v)
        if "hang" in body:
            if not isinstance(body["hang"], bool):
                raise BadRequest("hang must be true or false", param="hang")
            self.hang = body["hang"]
        if "crash" in body and not isinstance(body["crash"], bool):
            raise BadRequest("crash must be true or false", param="crash")


@dataclass
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 9000
    profile: str = "h100"
    flavor: str = "vllm"
    model: str = "demo-llm"
    instant: bool = False
    seed: int = 0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_tokens: int | None = None
    max_model_len: int = 32768
    block_size: int = 0  # KV block size in tokens; 0: the runtime's own (vLLM 16, TensorRT-LLM 64)
    enable_prefix_caching: bool = True
    kv_events_endpoint: str = ""  # ZeroMQ endpoint of vLLM-format KV events ("" = off)
    kv_events_replay_endpoint: str = ""
    kv_events_topic: str = ""
    traceparent_history: int = 100
    tls_cert: str = ""  # serve HTTPS with this certificate (PEM) ...
    tls_key: str = ""  # ... and key
    tls_client_ca: str = ""  # and require client certificates signed by this CA (mTLS)
    otlp_endpoint: str = ""  # OTLP/gRPC collector (host:port): one span per request, child of its traceparent
    enable_lora: bool = False  # serve LoRA adapters (vLLM's --enable-lora)
    lora_modules: dict[str, str] = field(default_factory=dict)  # adapter name -> path, served from the start
    max_loras: int = 1  # adapters resident on the GPU at once (vLLM's --max-loras)
    lora_load_s: float | None = None  # time to load an adapter into a slot (None: the profile's)
    # Disaggregated serving (vLLM's NixlConnector): prefill answers after the first token with kv_transfer_params,
    # decode pulls a remote prefill's KV over a link of kv_link_gbps; both honours kv_transfer_params either way.
    role: str = "both"
    kv_link_gbps: float = 100.0
    engine_id: str = ""  # vLLM's engine id, named in kv_transfer_params ("": one drawn at start)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca:
            ctx.load_verify_locations(cafile=self.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass
class Stats:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    errors: int = 0
    rejected: int = 0
    traceparents: deque[str] = field(default_factory=lambda: deque(maxlen=100))


@dataclass(eq=False)
class _Pending:
    seq: Seq
    queue: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)


class Emulator:
    """State of one emulated runtime: engine, driver task, metrics, faults and statistics."""

    def __init__(self, config: EmulatorConfig) -> None:
        if config.flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {config.flavor!r}; known: {', '.join(FLAVORS)}")
        self.config = config
        self.profile: GpuProfile = get_profile(config.profile)
        # TensorRT-LLM pages its KV cache in 64-token blocks, vLLM in 16-token blocks
        block_size = config.block_size or (64 if config.flavor == "triton" else 16)
        self.core = EngineCore(
            EngineConfig(
                profile=self.profile,
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                block_size=block_size,
                kv_tokens=config.kv_tokens,
                enable_prefix_caching=config.enable_prefix_caching and config.flavor != "vllm-v0",
                max_loras=config.max_loras if config.enable_lora else 0,
                lora_load_s=config.lora_load_s,
                kv_link_bytes_s=config.kv_link_gbps * 1e9 / 8,
            )
        )
        self.engine_id = config.engine_id or f"emu-{uuid.uuid4().hex[:12]}"
        self.side_port = config.port  # the listening port once bound: where a decode instance pulls from
        # adapter name -> (vLLM's lora_int_id, path); ids are never reused, as vLLM's
        self.loras: dict[str, tuple[int, str]] = {}
        self._next_lora_id = 1
        for name, path in config.lora_modules.items():
            self.add_lora(name, path)
        self.kv_events: KVEventPublisher | None = None
        self.max_model_len = min(config.max_model_len, self.core.max_model_len)
        self.metrics = RuntimeMetrics(
            config.flavor, config.model, self.profile, self.max_model_len, config.max_num_seqs
        )
        self.core.observer = self.metrics
        self.faults = Faults()
        self.stats = Stats(traceparents=deque(maxlen=config.traceparent_history))
        self.rng = random.Random(config.seed)
        self.created = int(time.time())
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._unhung = asyncio.Event()
        self._unhung.set()
        self._driver: asyncio.Task[None] | None = None
        self._instant_running = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.config.kv_events_endpoint:
            c = self.config
            self.kv_events = KVEventPublisher(c.kv_events_endpoint, c.kv_events_replay_endpoint, c.kv_events_topic)
            self.kv_events.start()
            # a fresh engine holds nothing: tells a subscriber that outlived an earlier process to forget it
            self.kv_events.publish([AllBlocksCleared()])
        if not self.config.instant:
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="emulator-engine")

    async def stop(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        if self.kv_events is not None:
            await self.kv_events.close()

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        while True:
            if self.faults.hang:
                await self._unhung.wait()
            step = self.core.schedule(loop.time())
            if step is None:
                self._wake.clear()
                arrival = self.core.next_arrival()  # remote KV on its way: wake when it is in
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if arrival is None else arrival - loop.time())
                t = loop.time()
                continue
            # Keep a virtual clock so event-loop lag does not slow the emulated GPU down, but never replay a
            # burst of iterations after a long stall.
            t = max(t, loop.time() - 0.05)
            end = t + step.duration_s * self.faults.slowdown
            delay = end - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for ev in self.core.complete(step, end):
                pending = self._pending.get(ev.seq.req_id)
                if pending is not None:
                    pending.queue.put_nowait(ev)
            events = self.core.kv.drain_events()
            if self.kv_events is not None and events:
                self.kv_events.publish(events)
            t = end

    # -- LoRA adapters -------------------------------------------------------------------------------------
    def add_lora(self, name: str, path: str) -> None:
        if not self.config.enable_lora:
            raise BadRequest("LoRA is not enabled on this runtime (start it with --enable-lora)")
        if not name or name == self.config.model:
            raise BadRequest(f"a LoRA adapter cannot be named {name!r}", param="lora_name")
        if name in self.loras:
            raise BadRequest(f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        self.loras[name] = (self._next_lora_id, path)
        self._next_lora_id += 1

    def remove_lora(self, name: str) -> None:
        if name not in self.loras:
            raise BadRequest(f"The lora adapter '{name}' cannot be found.", param="lora_name")
        del self.loras[name]
        self.core.loras.pop(name, None)  # a running request keeps its weights until it ends, as in vLLM

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return self._instant_running if self.config.instant else len(self.core.running)

    @property
    def waiting(self) -> int:
        return 0 if self.config.instant else len(self.core.waiting)

    def _kv_events_json(self) -> dict[str, Any] | None:
        if self.kv_events is None:
            return None
        return {
            "endpoint": self.kv_events.endpoint,
            "replay": self.kv_events.replay_endpoint,
            "seq": self.kv_events.seq,
        }

    def stats_json(self) -> dict[str, Any]:
        c = self.core.counters
        return {
            "requests": self.stats.requests,
            "completed": self.stats.completed,
            "aborted": self.stats.aborted,
            "errors": self.stats.errors,
            "rejected": self.stats.rejected,
            "running": self.running,
            "waiting": self.waiting,
            "kv_cache_usage": self.core.kv_usage,
            "kv_blocks_free": self.core.free_blocks,
            "kv_blocks_total": self.core.config.num_blocks,
            "preemptions": c.preemptions,
            "prompt_tokens": self.metrics.prompt_tokens,
            "generation_tokens": self.metrics.generation_tokens,
            "iterations": c.iterations,
            "prefix_cache": asdict(self.core.kv.stats),
            "block_size": self.core.config.block_size,
            "kv_events": self._kv_events_json(),
            "traceparents": list(self.stats.traceparents),
            "faults": asdict(self.faults),
            "model": self.config.model,
            "flavor": self.config.flavor,
            "profile": self.profile.name,
            "instant": self.config.instant,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.config.max_num_seqs,
            "role": self.config.role,
            "kv_transfer": {
                "engine_id": self.engine_id,
                "link_gbps": self.config.kv_link_gbps,
                "transfers": c.kv_transfers,
                "bytes": c.kv_transfer_bytes,
                "seconds": c.kv_transfer_s,
                "in_flight": len(self.core.transferring),
            },
            "lora": {
                "enabled": self.config.enable_lora,
                "max_loras": self.config.max_loras,
                "adapters": sorted(self.loras),
                "resident": list(self.core.loras),
                "loads": c.lora_loads,
                "evictions": c.lora_evictions,
            },
        }

    # -- generation ------------------------------------------------------------------------------------------
    def plan_request(self, prompt_tokens: int, max_tokens: int | None) -> tuple[int, int]:
        """(max_tokens, tokens to generate). With max_tokens the engine runs to the limit, like ignore_eos;
        without it the output length is drawn from a log-normal around 128 tokens (the Azure conversation trace
        median is 129), ending with "stop"."""
        room = self.max_model_len - prompt_tokens
        if room < 1:
            raise BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens} tokens in the messages. Please reduce the length of the messages.",
                param="messages",
            )
        if max_tokens is not None:
            if max_tokens > room:
                raise BadRequest(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                    "completion). Please reduce the length of the messages or completion.",
                    param="max_tokens",
                )
            return max_tokens, max_tokens
        natural = int(self.rng.lognormvariate(math.log(128), 0.8))
        return room, max(1, min(natural, room))

    def token_text(self, req_seed: int, index: int) -> str:
        return " " + _WORDS[(req_seed + index * 7919) % len(_WORDS)]

    async def generate(self, req_id: str, prompt_tokens: int, max_tokens: int, target: int,  # type: ignore[no-untyped-def]
                       token_ids: list[int] | None = None, lora: str | None = None, remote_tokens: int = 0,
                       done: list[Seq] | None = None):  # fmt: skip
        """Async iterator of (index, finished) for each generated token. `remote_tokens`: prompt tokens whose KV a
        remote prefill computed (pulled, not computed); `done` receives the sequence once it finished."""
        if self.config.instant:
            self._instant_running += 1
            try:
                if self.faults.hang:
                    await self._unhung.wait()
                for i in range(target):
                    yield i, i == target - 1
                self.metrics.prompt_tokens += prompt_tokens
                self.metrics.generation_tokens += target
                self.metrics.finished["length" if target >= max_tokens else "stop"] += 1
            finally:
                self._instant_running -= 1
            return
        loop = asyncio.get_running_loop()
        lora_id = self.loras[lora][0] if lora is not None and lora in self.loras else None
        seq = Seq(req_id=req_id, prompt_tokens=prompt_tokens, max_tokens=max_tokens, target_tokens=target,
                  arrival=loop.time(), token_ids=token_ids, lora=lora, lora_id=lora_id,
                  remote_tokens=remote_tokens)  # fmt: skip
        pending = _Pending(seq)
        self._pending[req_id] = pending
        try:
            self.core.add(seq)
            self._wake.set()
            while True:
                ev = await pending.queue.get()
                if ev.finished and done is not None:
                    done.append(seq)
                yield ev.index, ev.finished
                if ev.finished:
                    return
        finally:
            self._pending.pop(req_id, None)
            if not seq.done:
                self.core.abort(req_id, loop.time())

    def set_hang(self, hang: bool) -> None:
        if hang:
            self._unhung.clear()
        else:
            self._unhung.set()


# -- request parsing ---------------------------------------------------------------------------------------------
def _count_text_tokens(text: str) -> int:
    # About four characters per token for English text with a BPE tokenizer.
    return max(1, math.ceil(len(text) / 4))


def _int_field(body: dict[str, Any], name: str, minimum: int) -> int | None:
    if body.get(name) is None:
        return None
    v = body[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise BadRequest(f"{name} must be an integer >= {minimum}, got {v!r}", param=name)
    return v


def prompt_of(body: dict[str, Any], chat: bool) -> tuple[int, list[int] | None]:
    """Prompt length and token ids (the project's tokenizer; `prompt_token_ids` accepted). A `prompt_tokens`
    extension field overrides the length; the ids then count only when they agree with it."""
    explicit = _int_field(body, "prompt_tokens", 1)
    length = prompt_tokens_of(body, chat)
    try:
        ids = tok.request_token_ids(body, chat)
    except (ValueError, TypeError) as e:
        raise BadRequest(str(e), param="prompt_token_ids" if "prompt_token_ids" in str(e) else "prompt") from None
    if ids is None:
        return length, None
    if explicit is not None:
        return explicit, ids if len(ids) == explicit else None
    return len(ids), ids


def prompt_tokens_of(body: dict[str, Any], chat: bool) -> int:
    """Prompt length in tokens: the `prompt_tokens` extension field when given, else estimated from the text."""
    explicit = _int_field(body, "prompt_tokens", 1)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", param="messages")
        total = 3  # the assistant header of the chat template
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise BadRequest(f"messages[{i}] must be an object with a role", param="messages")
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            elif content is not None and not isinstance(content, str):
                raise BadRequest(f"messages[{i}].content must be a string or a list of parts", param="messages")
            total += 4 + _count_text_tokens(content or "")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            total = _count_text_tokens(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            total = len(prompt)  # token ids
        elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            total = _count_text_tokens(prompt[0])
        else:
            raise BadRequest("prompt must be a string or a list of token ids (one prompt per request)", param="prompt")
    return explicit if explicit is not None else total


# -- HTTP ----------------------------------------------------------------------------------------------------------
def _error(status: int, message: str, param: str | None = None) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}.get(status, "Error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


EMULATOR_KEY = web.AppKey("emulator", Emulator)


async def _completions(request: web.Request, chat: bool) -> web.StreamResponse:
    em = request.app[EMULATOR_KEY]
    tp = request.headers.get("traceparent")
    if tp:
        em.stats.traceparents.append(tp)
    em.stats.requests += 1
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        em.stats.rejected += 1
        em.metrics.errors.add("validation")
        return _error(400, "the request body is not valid JSON")
    try:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        lora = model if isinstance(model, str) and model in em.loras else None
        if model != em.config.model and lora is None:
            em.stats.rejected += 1
            em.metrics.errors.add("validation")
            _warn_once(f"model-{em.config.model}", f"a request named model {str(model)[:64]!r}, which this runtime "
                       "does not serve (answered 404; further ones are counted, not logged)")  # fmt: skip
            return _error(404, f"The model `{model}` does not exist.", param="model")
        _int_field(body, "n", 1)  # n > 1, logprobs, tools, response_format: agents/emulator/apis.py
        prompt_tokens, token_ids = prompt_of(body, chat)
        max_tokens = _int_field(body, "max_completion_tokens", 1) if chat else None
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", 1)
        try:
            remote_decode, remote = kvtransfer.parse(body.get("kv_transfer_params"))
        except kvtransfer.KvTransferError as e:
            raise BadRequest(str(e), param="kv_transfer_params") from None
        # a prefill instance ends every request at its first token, as a proxy's max_tokens=1 does
        remote_decode = remote_decode or em.config.role == "prefill"
        if remote_decode:
            max_tokens = 1
        max_tokens, target = em.plan_request(prompt_tokens, max_tokens)
        # the pulled blocks cover at most the prompt (the decode instance computes its last token itself)
        remote_tokens = min(prompt_tokens, len(remote.block_ids) * em.core.config.block_size) if remote else 0
        stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    except BadRequest as e:
        em.stats.rejected += 1
        em.metrics.errors.add("validation")
        return _error(400, str(e), e.param)
    if em.faults.error_rate and em.rng.random() < em.faults.error_rate:
        em.stats.errors += 1
        em.metrics.errors.add("generation")
        return _error(500, "emulated engine failure (fault injection)")
    if apis.wants_extended(body) and lora is None and not remote_decode and not remote_tokens:
        try:
            return await apis.extended_completion(
                request, apis.Runtime(em), body, chat, prompt_tokens, token_ids, max_tokens, target
            )
        except apis.ApiError as e:
            em.stats.rejected += 1
            em.metrics.errors.add("validation")
            return _error(e.status, e.message, e.param)

    req_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    req_seed = em.rng.randrange(1 << 30)
    created = int(time.time())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}
    finished_seq: list[Seq] = []
    gen = em.generate(req_id, prompt_tokens, max_tokens, target, token_ids, lora, remote_tokens, finished_seq)
    finish_reason = "length" if target >= max_tokens else "stop"
    try:
        if not stream:
            pieces = [em.token_text(req_seed, i) async for i, _ in gen]
            usage["completion_tokens"] = len(pieces)
            usage["total_tokens"] = prompt_tokens + len(pieces)
            text = "".join(pieces)
            em.stats.completed += 1
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "stop_reason": None,
                }
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                          "stop_reason": None}  # fmt: skip
            answer: dict[str, Any] = {
                "id": req_id,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": lora or em.config.model,
                "choices": [choice],
                "usage": usage,
            }
            if remote_decode:
                held = finished_seq[0].held_block_ids if finished_seq else []
                answer["kv_transfer_params"] = kvtransfer.prefill_answer(
                    em.engine_id, held, em.config.host, em.side_port, req_id, prompt_tokens, em.core.config.block_size
                )
            return web.json_response(answer)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": req_id, "object": obj, "created": created, "model": lora or em.config.model}
        count = 0
        async for i, finished in gen:
            piece = em.token_text(req_seed, i)
            fr = finish_reason if finished else None
            if chat:
                if i == 0:
                    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}  # fmt: skip
                    await resp.write(_sse({**head, "choices": [first]}))
                c: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": fr}
            else:
                c = {"index": 0, "text": piece, "logprobs": None, "finish_reason": fr}
            if finished:
                c["stop_reason"] = None
            await resp.write(_sse({**head, "choices": [c]}))
            count += 1
        if include_usage:
            usage["completion_tokens"] = count
            usage["total_tokens"] = prompt_tokens + count
            await resp.write(_sse({**head, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        em.stats.completed += 1
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: the engine drops the sequence (in `generate`'s finally) and frees its KV blocks.
        em.stats.aborted += 1
        if em.config.instant:
            em.metrics.finished["abort"] += 1
        raise
    finally:
        await gen.aclose()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, chat=False)


async def models(request: web.Request) -> web.Response:
    em = request.app[EMULATOR_KEY]
    card = {
        "id": em.config.model,
        "object": "model",
        "created": em.created,
        "owned_by": _OWNER[em.config.flavor],
        "root": em.config.model,
        "parent": None,
        "max_model_len": em.max_model_len,
    }
    cards = [card]
    for name, (_, path) in em.loras.items():
        cards.append({**card, "id": name, "root": path, "parent": em.config.model})
    return web.json_response({"object": "list", "data": cards})


async def load_lora_adapter(request: web.Request) -> web.Response:
    """vLLM's runtime adapter loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING): {"lora_name", "lora_path"}."""
    em = request.app[EMULATOR_KEY]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise BadRequest("Both 'lora_name' and 'lora_path' must be provided.")
        em.add_lora(name, path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the request body is not valid JSON")
    except BadRequest as e:
        return _error(400, str(e), e.param)
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: web.Request) -> web.Response:
    em = request.app[EMULATOR_KEY]
    try:
        body = await request.json()
        name = body.get("lora_name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest("'lora_name' must be provided.")
        em.remove_lora(name)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the request body is not valid JSON")
    except BadRequest as e:
        return _error(404 if "cannot be found" in str(e) else 400, str(e), e.param)
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    em = request.app[EMULATOR_KEY]
    text = em.metrics.render(
        None if em.config.instant else em.core, running=em.running, waiting=em.waiting, kv_usage=em.core.kv_usage
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"X-Content-Version": "0.0.4"})


async def tgi_info(request: web.Request) -> web.Response:
    """TGI's GET /info, where it names the model it serves (its /metrics does not)."""
    em = request.app[EMULATOR_KEY]
    return web.json_response(
        {
            "model_id": em.config.model,
            "model_dtype": "torch.bfloat16",
            "model_device_type": "cuda",
            "max_concurrent_requests": em.config.max_num_seqs,
            "max_input_tokens": em.max_model_len - 1,
            "max_total_tokens": em.max_model_len,
            "router": "text-generation-router",
        }
    )


async def reset_prefix_cache(request: web.Request) -> web.Response:
    """vLLM's POST /reset_prefix_cache: drops every cached block (AllBlocksCleared) when none is in use."""
    em = request.app[EMULATOR_KEY]
    if not em.core.kv.clear():
        return _error(400, "the prefix cache has blocks in use by running requests; try again when idle")
    if em.kv_events is not None:
        em.kv_events.publish(em.core.kv.drain_events())
    return web.Response(status=200)


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR_KEY].stats_json())


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[EMULATOR_KEY].faults))


async def post_faults(request: web.Request) -> web.Response:
    em = request.app[EMULATOR_KEY]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the fault body is not valid JSON")
    try:
        em.faults.update(body)
    except BadRequest as e:
        return _error(400, str(e), e.param)
    em.set_hang(em.faults.hang)
    if body.get("crash"):
        log.warning("crash injected: exiting")
        # Answer first so the caller knows the fault took, then die without any cleanup, like a real crash.
        asyncio.get_running_loop().call_later(0.05, os._exit, 70)
        return web.json_response({**asdict(em.faults), "crash": True})
    return web.json_response(asdict(em.faults))


def _tracing_middleware(endpoint: str) -> Any:
    """The runtime's hop of a trace: a SERVER span per request under the caller's `traceparent`, sent over OTLP."""
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from agents.tracing import otlp_provider

    provider = otlp_provider("infermesh-runtime-emulator", endpoint)
    tracer = provider.get_tracer("infermesh.emulator")
    propagator = TraceContextTextMapPropagator()

    @web.middleware
    async def trace_request(request: web.Request, handler: Any) -> web.StreamResponse:
        parent = propagator.extract(carrier=dict(request.headers))
        with tracer.start_as_current_span(f"{request.method} {request.path}", context=parent, kind=SpanKind.SERVER):
            resp: web.StreamResponse = await handler(request)
            return resp

    async def flush(app: web.Application) -> None:
        provider.shutdown()

    return trace_request, flush


def build_app(config: EmulatorConfig) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    if config.otlp_endpoint:
        middleware, flush = _tracing_middleware(config.otlp_endpoint)
        app.middlewares.append(middleware)
        app.on_cleanup.append(flush)
    em = Emulator(config)
    app[EMULATOR_KEY] = em

    async def on_startup(app: web.Application) -> None:
        em.start()

    async def on_cleanup(app: web.Application) -> None:
        await em.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    if config.enable_lora:
        app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
        app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    app.router.add_get("/health", health)
    app.router.add_get("/v2/health/ready", health)  # Triton
    app.router.add_get("/v2/health/live", health)
    app.router.add_get("/metrics", metrics)
    apis.add_routes(app, EMULATOR_KEY, config.flavor)  # the routes this flavour's release serves beyond these
    if config.flavor == "tgi":
        app.router.add_get("/info", tgi_info)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    app.router.add_get("/emulator/stats", get_stats)
    app.router.add_get("/emulator/faults", get_faults)
    app.router.add_post("/emulator/faults", post_faults)
    return app


async def serve(config: EmulatorConfig, ready: asyncio.Event | None = None) -> None:
    app = build_app(config)
    # handler_cancellation: a client that disconnects cancels its handler, which aborts the engine sequence
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    tls = config.ssl_context()
    site = web.TCPSite(runner, config.host, config.port, backlog=2048, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise BindError(join_host_port(config.host, config.port), reason_of(exc), "--host/--port") from None
    port = runner.addresses[0][1]
    em = app[EMULATOR_KEY]
    em.side_port = port
    scheme = "https" if tls is not None else "http"
    mtls = " mtls=required" if config.tls_client_ca else ""
    print(
        f"emulate-runtime listening on {scheme}://{config.host}:{port}{mtls} flavor={config.flavor} "
        f"profile={em.profile.name} model={config.model} instant={config.instant} "
        f"kv_tokens={em.core.max_model_len} max_num_seqs={config.max_num_seqs} role={config.role}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def parse_args(argv: Sequence[str]) -> EmulatorConfig:
    p = Parser(
        prog="infermesh emulate-runtime",
        epilog=examples(
            "infermesh emulate-runtime --port 9001 --profile h100 --model demo-llm",
            "infermesh emulate-runtime --port 0 --flavor sglang --instant   # any free port, no token timing",
        ),
        description="Serve an emulated continuous-batching LLM runtime (OpenAI API, runtime-exact /metrics).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=9000, help="0 picks a free port (printed on start)")
    p.add_argument("--profile", default="h100", help=f"GPU profile: {', '.join(profile_names())}")
    p.add_argument("--flavor", default="vllm", choices=FLAVORS, help="which runtime's /metrics format to serve")
    p.add_argument("--model", default="demo-llm", help="served model name")
    p.add_argument("--instant", action="store_true", help="no token timing: answer as fast as possible")
    p.add_argument("--seed", type=int, default=0, help="seed of the emulated timings and texts")
    p.add_argument("--otlp-endpoint", default="", help="send a span per request to this OTLP/gRPC collector")
    p.add_argument("--max-num-seqs", type=int, default=256, help="sequences in the running batch at most")
    p.add_argument(
        "--max-num-batched-tokens", type=int, default=8192, help="tokens (prefill + decode) per engine step at most"
    )
    p.add_argument("--kv-tokens", type=int, default=None, help="override the profile's KV-cache capacity")
    p.add_argument("--max-model-len", type=int, default=32768, help="prompt + output tokens per request at most")
    p.add_argument("--block-size", type=int, default=0, help="KV block size in tokens (default: the runtime's own)")
    p.add_argument("--no-prefix-caching", action="store_true", help="turn the prefix cache off")
    p.add_argument(
        "--kv-events-endpoint",
        default="",
        metavar="ZMQ",
        help="publish vLLM-format KV events here (tcp://*:PORT binds, tcp://HOST:PORT connects)",
    )
    p.add_argument("--kv-events-replay-endpoint", default="", metavar="ZMQ", help="serve replays here (binds)")
    p.add_argument("--kv-events-topic", default="", help="topic frame of each KV-event message")
    p.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters (named as the request's model)")
    p.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH",
                   help="adapters served from the start (implies --enable-lora)")  # fmt: skip
    p.add_argument("--max-loras", type=int, default=1, help="LoRA adapters resident on the GPU at once")
    p.add_argument("--lora-load-s", type=float, default=None,
                   help="seconds to load an adapter into a GPU slot (default: the profile's)")  # fmt: skip
    p.add_argument("--role", default="both", choices=("both", "prefill", "decode"),
                   help="disaggregated serving: prefill answers after the first token with kv_transfer_params; "
                   "decode pulls a remote prefill's KV (vLLM's NixlConnector fields); both honours either")  # fmt: skip
    p.add_argument("--kv-link-gbps", type=float, default=100.0,
                   help="bandwidth of the link remote KV is pulled over, in Gbit/s")  # fmt: skip
    p.add_argument("--engine-id", default="", help="engine id named in kv_transfer_params (default: drawn)")
    p.add_argument("--tls-cert", default="", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", default="", metavar="PEM", help="the certificate's private key")
    p.add_argument("--tls-client-ca", default="", metavar="PEM", help="require client certificates from this CA")
    a = p.parse_args(list(argv))
    try:
        get_profile(a.profile)
    except ValueError as e:
        p.error(f"--profile: {e}")
    for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.block_size < 0 or a.block_size > 1024:
        p.error("--block-size must be between 1 and 1024 (0: the runtime's own)")
    if a.kv_events_replay_endpoint and not a.kv_events_endpoint:
        p.error("--kv-events-replay-endpoint needs --kv-events-endpoint")
    for flag in ("kv_events_endpoint", "kv_events_replay_endpoint"):
        value = getattr(a, flag)
        if value and not value.startswith(("tcp://", "ipc://", "inproc://")):
            p.error(f"--{flag.replace('_', '-')}: {value!r} is not a ZeroMQ endpoint (tcp://HOST:PORT)")
    if a.kv_tokens is not None and a.kv_tokens < 16:
        p.error("--kv-tokens must be >= 16")
    loras: dict[str, str] = {}
    for item in a.lora_modules:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"--lora-modules: {item!r} is not NAME=PATH")
        if name == a.model or name in loras:
            p.error(f"--lora-modules: adapter name {name!r} is the model's or given twice")
        loras[name] = path
    if a.max_loras < 1:
        p.error("--max-loras must be >= 1")
    if not a.kv_link_gbps > 0:
        p.error("--kv-link-gbps must be > 0")
    if a.lora_load_s is not None and a.lora_load_s < 0:
        p.error("--lora-load-s must be >= 0")
    if not 0 <= a.port <= 65535:
        p.error("--port must be between 0 and 65535")
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if a.tls_client_ca and not a.tls_cert:
        p.error("--tls-client-ca needs --tls-cert and --tls-key")
    config = EmulatorConfig(
        host=a.host, port=a.port, profile=a.profile, flavor=a.flavor, model=a.model, instant=a.instant,
        seed=a.seed, max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
        kv_tokens=a.kv_tokens, max_model_len=a.max_model_len, block_size=a.block_size,
        enable_prefix_caching=not a.no_prefix_caching, kv_events_endpoint=a.kv_events_endpoint,
        kv_events_replay_endpoint=a.kv_events_replay_endpoint, kv_events_topic=a.kv_events_topic,
        tls_cert=a.tls_cert, tls_key=a.tls_key, tls_client_ca=a.tls_client_ca, otlp_endpoint=a.otlp_endpoint,
        enable_lora=a.enable_lora or bool(loras), lora_modules=loras, max_loras=a.max_loras,
        lora_load_s=a.lora_load_s, role=a.role, kv_link_gbps=a.kv_link_gbps, engine_id=a.engine_id,
    )  # fmt: skip
    for flag in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(a, flag)
        try:
            if path:
                open(path, "rb").close()
        except OSError as e:
            p.error(f"--{flag.replace('_', '-')}: cannot read {path}: {e.strerror}")
    try:
        config.ssl_context()
    except ssl.SSLError as e:
        p.error(f"--tls-cert/--tls-key/--tls-client-ca: not a usable certificate, key and CA: {e}")
    return config


def main(argv: Sequence[str]) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='{"level":"%(levelname)s","msg":"%(message)s"}')
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(serve(config))
        except BindError as exc:
            return fail("infermesh emulate-runtime", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
