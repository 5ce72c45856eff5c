"""NCCL Inspector output (NVIDIA/nccl ext-profiler/inspector) to CommStats: its JSON records (one object per
collective per communicator) and its Prometheus textfile mode (NCCL_INSPECTOR_PROM_DUMP=1).

Record layout (output format v4.0): {"header": {"id", "rank", "n_ranks", "nnodes"}, "metadata": {...},
"coll_perf": {"coll", "coll_sn", "coll_msg_size_bytes", "coll_exec_time_us", "coll_algobw_gbs", "coll_busbw_gbs"}}.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.signals.runtime.exposition import parse_exposition
from agents.signals.types import CommStats

log = logging.getLogger("infermesh.comm.inspector")

# NCCL's collective names -> the lower-case names CommStats uses (and busbw factors key on)
_COLLECTIVES = {
    "allreduce": "allreduce", "allgather": "allgather", "reducescatter": "reducescatter", "broadcast": "broadcast",
    "reduce": "reduce", "alltoall": "alltoall", "send": "send", "recv": "recv", "sendrecv": "sendrecv",
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([KMGT]?)i?B\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class InspectorFormatError(ValueError):
    """A record that is not NCCL Inspector output."""


def collective_name(raw: str) -> str:
    key = raw.replace("_", "").replace(" ", "").lower()
    return _COLLECTIVES.get(key, key)


@dataclass(frozen=True, slots=True)
class InspectorRecord:
    """One parsed record: the CommStats plus what only the Inspector knows."""

    stats: CommStats
    comm_id: str
    coll_sn: int
    reported_busbw_gbps: float | None
    hostname: str = ""


def record_from_json(obj: Any, *, job_id: str) -> InspectorRecord:
    """Map one Inspector JSON object; raises InspectorFormatError naming the missing or bad field."""
    if not isinstance(obj, dict):
        raise InspectorFormatError("an Inspector record must be a JSON object")
    header, perf = obj.get("header"), obj.get("coll_perf")
    if not isinstance(header, dict) or not isinstance(perf, dict):
        raise InspectorFormatError("an Inspector record needs 'header' and 'coll_perf' objects")
    try:
        coll = str(perf["coll"])
        size = int(perf["coll_msg_size_bytes"])
        time_us = float(perf["coll_exec_time_us"])
        rank, n_ranks = int(header["rank"]), int(header["n_ranks"])
    except KeyError as e:
        raise InspectorFormatError(f"Inspector record lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise InspectorFormatError(f"Inspector record has a bad value: {e}") from None
    if size < 0 or not math.isfinite(time_us) or time_us < 0 or n_ranks < 1 or not 0 <= rank < n_ranks:
        raise InspectorFormatError(
            f"Inspector record out of range: size={size} time_us={time_us} rank={rank}/{n_ranks}"
        )
    busbw = perf.get("coll_busbw_gbs")
    name = collective_name(coll)
    if name in ("allgather", "reducescatter"):
        # the Inspector reports the per-rank message; CommStats (like nccl-tests) counts the whole buffer, which is
        # what the Inspector's own algbw is computed from
        size *= n_ranks
    stats = CommStats(
        job_id=job_id, rank=rank, collective=name, bytes=size, time_s=time_us / 1e6,
        n_ranks=n_ranks, algorithm=str(perf.get("coll_algo", "") or ""),
    )  # fmt: skip
    raw_meta = obj.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    return InspectorRecord(
        stats=stats, comm_id=str(header.get("id", "")), coll_sn=int(perf.get("coll_sn", -1)),
        reported_busbw_gbps=float(busbw) if isinstance(busbw, int | float) else None,
        hostname=str(meta.get("hostname", "")),
    )  # fmt: skip


def iter_json_objects(text: str) -> tuple[list[Any], int]:
    """Concatenated or line-delimited JSON objects; returns (objects, characters consumed).

    A trailing object cut off by a writer still at work is not consumed, so a tailing reader picks it up later.
    """
    dec = json.JSONDecoder()
    out: list[Any] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n:
            return out, pos
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if not text.rstrip().endswith("}"):
                return out, pos  # an object still being written at the end: leave it for the next read
            raise InspectorFormatError(f"not NCCL Inspector JSON at offset {pos}: {e.msg}") from None
        out.append(obj)
        pos = end


def parse_inspector_json(text: str, *, job_id: str) -> list[CommStats]:
    objs, _ = iter_json_objects(text)
    return [record_from_json(o, job_id=job_id).stats for o in objs]


def parse_inspector_prometheus(text: str, *, job_id: str = "") -> list[CommStats]:
    """Inspector's Prometheus textfile: nccl_collective_exec_time_microseconds and nccl_algorithm_bandwidth_gbs
    per (comm_id, rank, coll_sn). Bytes come from algbw x time (algbw is bytes/time in 1e9 units)."""
    return [st for st, _, _ in _prom_records(text, job_id)]


def _prom_records(text: str, job_id: str) -> list[tuple[CommStats, str, int]]:
    idx = parse_exposition(text)
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for name, field in (
        ("nccl_collective_exec_time_microseconds", "time_us"),
        ("nccl_algorithm_bandwidth_gbs", "algbw"),
        ("nccl_bus_bandwidth_gbs", "busbw"),
    ):
        for s in idx.get(name):
            lb = s.labels
            key = (lb.get("comm_id", ""), lb.get("rank", ""), lb.get("coll_sn", ""), lb.get("collective", ""))
            row = rows.setdefault(key, {"labels": lb})
            row[field] = s.value
    out: list[tuple[CommStats, str, int]] = []
    for (comm, rank, sn, coll), row in rows.items():
        lb = row["labels"]
        if "time_us" not in row or not coll:
            continue
        time_s = row["time_us"] / 1e6
        if "algbw" in row:
            size = round(row["algbw"] * 1e9 * time_s)
        else:
            m = _SIZE.match(lb.get("message_size", ""))
            if not m:
                continue
            size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
        try:
            st = CommStats(
                job_id=job_id or lb.get("slurm_job_id", ""),
                rank=int(rank),
                collective=collective_name(coll),
                bytes=size,
                time_s=time_s,
                n_ranks=int(lb.get("n_ranks", "1")),
            )
            out.append((st, comm, int(sn or -1)))
        except ValueError:
            log.warning("skipping Inspector sample with a bad rank or n_ranks: %s", lb)
    return out


class NcclInspectorSource:
    """Tails an Inspector dump directory: JSON files are read incrementally, Prometheus files as snapshots."""

    def __init__(self, dump_dir: str | Path, *, job_id: str) -> None:
        self.dump_dir = Path(dump_dir)
        self.job_id = job_id
        self._offsets: dict[Path, int] = {}
        self._seen_sn: dict[tuple[str, int], int] = {}
        self.bad_records = 0

    def read(self) -> list[CommStats]:
        """CommStats written since the previous read."""
        out: list[CommStats] = []
        if not self.dump_dir.is_dir():
            return out
        for path in sorted(self.dump_dir.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix == ".prom":
                out.extend(self._read_prom(path))
            elif path.suffix in (".json", ".log", ".jsonl"):
                out.extend(self._read_json(path))
        return out

    def _read_json(self, path: Path) -> list[CommStats]:
        start = self._offsets.get(path, 0)
        with path.open("rb") as f:
            f.seek(start)
            chunk = f.read()
        text = chunk.decode("utf-8", errors="replace")
        try:
            objs, used = iter_json_objects(text)
        except InspectorFormatError as e:
            log.warning("%s: %s; skipping the rest of the file", path, e)
            self.bad_records += 1
            self._offsets[path] = start + len(chunk)
            return []
        self._offsets[path] = start + len(text[:used].encode("utf-8"))
        out = []
        for o in objs:
            try:
                out.append(record_from_json(o, job_id=self.job_id).stats)
            except InspectorFormatError as e:
                self.bad_records += 1
                log.warning("%s: %s", path, e)
        return out

    def _read_prom(self, path: Path) -> list[CommStats]:
        try:
            records = _prom_records(path.read_text(), self.job_id)
        except ValueError as e:
            self.bad_records += 1
            log.warning("%s: %s", path, e)
            return []
        # the textfile is rewritten in place with the latest collective per communicator and rank: count each once
        fresh = []
        for st, comm, sn in records:
            key = (comm, st.rank)
            if sn > self._seen_sn.get(key, -1):
                self._seen_sn[key] = sn
                fresh.append(st)
        return fresh
