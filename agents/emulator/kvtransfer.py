"""`kv_transfer_params`, the field of an OpenAI request and answer through which vLLM's disaggregated serving hands a
prompt's KV from a prefill instance to a decode instance (vLLM's NixlConnector format).

A proxy sends the prefill instance the request with `max_tokens: 1`, `stream: false` and `PREFILL_REQUEST`; the
prefill answers with its own params (`do_remote_prefill`, the blocks holding the prompt's KV, its engine id and
the host and port to pull them from); the proxy copies those into the request it sends the decode instance, which
pulls the blocks instead of prefilling. The router (router/pd.py) and the emulator read and write them here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a proxy asks a prefill instance for (the field names and nulls vLLM's proxies send).
PREFILL_REQUEST: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


class KvTransferError(ValueError):
    """kv_transfer_params a runtime cannot act on (answered with 400, naming the field)."""


@dataclass(frozen=True, slots=True)
class RemotePrefill:
    """Where a decode instance pulls a prompt's KV from."""

    engine_id: str
    block_ids: list[int]
    host: str
    port: int
    request_id: str = ""


def parse(value: Any) -> tuple[bool, RemotePrefill | None]:
    """(do_remote_decode, the remote prefill to pull from or None) of a request's `kv_transfer_params`."""
    if value is None:
        return False, None
    if not isinstance(value, dict):
        raise KvTransferError("kv_transfer_params must be an object")
    remote_decode = value.get("do_remote_decode", False)
    remote_prefill = value.get("do_remote_prefill", False)
    if not isinstance(remote_decode, bool) or not isinstance(remote_prefill, bool):
        raise KvTransferError("kv_transfer_params.do_remote_decode and .do_remote_prefill must be true or false")
    if remote_decode and remote_prefill:
        raise KvTransferError("kv_transfer_params: do_remote_decode and do_remote_prefill exclude each other")
    if not remote_prefill:
        return remote_decode, None
    ids, engine, host, port = (
        value.get(k) for k in ("remote_block_ids", "remote_engine_id", "remote_host", "remote_port")
    )
    if not isinstance(ids, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in ids):
        raise KvTransferError("kv_transfer_params.remote_block_ids must be a list of block ids (integers >= 0)")
    if not isinstance(engine, str) or not engine:
        raise KvTransferError("kv_transfer_params.remote_engine_id must name the prefill engine")
    if not isinstance(host, str) or not host:
        raise KvTransferError("kv_transfer_params.remote_host must be the prefill instance's host")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise KvTransferError("kv_transfer_params.remote_port must be a port number")
    rid = value.get("remote_request_id", "")
    return False, RemotePrefill(engine, ids, host, port, rid if isinstance(rid, str) else "")


def prefill_answer(
    engine_id: str, block_ids: list[int], host: str, port: int, request_id: str, prompt_tokens: int, block_size: int
) -> dict[str, Any]:
    """The params a prefill instance answers with: the full blocks of the prompt (a partial last block is
    recomputed by the decode instance, as NixlConnector does)."""
    full = block_ids[: prompt_tokens // block_size]
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": full,
        "remote_engine_id": engine_id,
        "remote_request_id": request_id,
        "remote_host": host,
        "remote_port": port,
        "tp_size": 1,
    }
