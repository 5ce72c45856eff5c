"""Reports the scheduler's job state (`kv/training/jobs/<id>`) to the portal: sans-IO, the store's contents and the
time in, the frames to send out. Run by the Raft leader's portal link; the portal dedupes what a new leader repeats."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agents.proto.portal_link import JOB_STATUSES, JobEvent, JobStatus, JobTelemetry

PORTAL_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
JobFrame = JobStatus | JobEvent | JobTelemetry


class JobReporter:
    """What the portal has not heard yet, per job: new scheduler events (status changes travel as job_status frames,
    which the portal turns into its own status events), the telemetry roll-up when it changed (at most every
    `telemetry_every_s`, and always before a final status), and the status when it differs from the portal's (as the
    portal pushed it back in `kv/portal/jobs/<id>`). Order within a job: events (placements first), telemetry, status.
    """

    def __init__(self, telemetry_every_s: float = 1.0) -> None:
        self.telemetry_every_s = telemetry_every_s
        self.sent_events: dict[str, set[tuple[float, str, str]]] = {}
        self.sent_status: dict[str, tuple[str, str]] = {}
        self.sent_telemetry: dict[str, tuple[str, float]] = {}

    def forget(self, jid: str) -> None:
        self.sent_events.pop(jid, None)
        self.sent_status.pop(jid, None)
        self.sent_telemetry.pop(jid, None)

    def step(self, jobs: Mapping[str, Any], portal: Mapping[str, Any], now: float) -> list[JobFrame]:
        """`jobs`: scheduler state by job id; `portal`: the portal's job records by job id."""
        frames: list[JobFrame] = []
        for jid in list(self.sent_status.keys() | self.sent_events.keys()):
            if jid not in jobs:
                self.forget(jid)
        for jid, st in sorted(jobs.items()):
            record = portal.get(jid)
            if not isinstance(st, dict) or not isinstance(record, dict) or not jid.isdigit() or int(jid) <= 0:
                continue  # not a job of the portal's (or a damaged record): nobody to report to
            portal_status = str(record.get("status", ""))
            if portal_status in PORTAL_TERMINAL:
                self.forget(jid)
                continue
            status = str(st.get("status", ""))
            frames.extend(self._events(jid, st))
            frames.extend(self._telemetry(jid, st, now, final=status in PORTAL_TERMINAL))
            reason = str(st.get("reason", ""))[:500]
            if status in JOB_STATUSES and status != portal_status and self.sent_status.get(jid) != (status, reason):
                self.sent_status[jid] = (status, reason)
                frames.append(JobStatus.model_validate({"seq": 1, "job_id": int(jid), "status": status,
                                                        "reason": reason}))  # fmt: skip
        return frames

    def _events(self, jid: str, st: Mapping[str, Any]) -> list[JobFrame]:
        sent = self.sent_events.setdefault(jid, set())
        out: list[JobFrame] = []
        for e in st.get("events") or []:
            kind = str(e.get("kind", ""))
            if not kind or kind.startswith("status."):
                continue
            key = (float(e.get("at", 0.0)), kind, str(e.get("message", "")))
            if key in sent:
                continue
            sent.add(key)
            data = dict(e.get("data") or {})
            data["at"] = key[0]  # the scheduler's time: the portal records each event once by it
            out.append(
                JobEvent.model_validate(
                    {"seq": 1, "job_id": int(jid), "kind": kind[:50], "message": key[2][:1000], "data": data}
                )
            )
        return out

    def _telemetry(self, jid: str, st: Mapping[str, Any], now: float, *, final: bool) -> list[JobFrame]:
        tel = st.get("telemetry")
        if not isinstance(tel, dict) or not tel:
            return []
        text = json.dumps(tel, sort_keys=True)
        last_text, last_at = self.sent_telemetry.get(jid, ("", float("-inf")))
        if text == last_text or (not final and now - last_at < self.telemetry_every_s):
            return []
        self.sent_telemetry[jid] = (text, now)
        generation = int(tel.get("generation") or 0)
        return [JobTelemetry.model_validate({"seq": 1, "job_id": int(jid), "generation": generation, "data": tel})]
