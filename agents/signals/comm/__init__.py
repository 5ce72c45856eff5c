"""Comm adapters for training telemetry: NCCL Inspector output and a DDP comm-hook recorder, both to CommStats."""

from agents.signals.comm.ddp import CommHookRecorder, make_allreduce_hook, register_comm_hook, summarize
from agents.signals.comm.inspector import (
    InspectorFormatError,
    NcclInspectorSource,
    parse_inspector_json,
    parse_inspector_prometheus,
)

__all__ = [
    "CommHookRecorder",
    "InspectorFormatError",
    "NcclInspectorSource",
    "make_allreduce_hook",
    "parse_inspector_json",
    "parse_inspector_prometheus",
    "register_comm_hook",
    "summarize",
]
