"""The portal-agent wire schema: valid frames parse, bad ones are refused with the field named."""

from __future__ import annotations

import json

import pytest

from agents.proto.portal_link import (
    Ack,
    Changes,
    Hello,
    ProtocolError,
    Snapshot,
    Telemetry,
    dump,
    parse_agent_message,
    parse_portal_message,
)


def test_agent_frames_round_trip() -> None:
    hello = Hello(seq=1, node="node-1", applied_version=7, store="raft")
    assert parse_agent_message(dump(hello)) == hello
    ack = parse_agent_message('{"type": "ack", "seq": 2, "version": 9}')
    assert isinstance(ack, Ack) and ack.version == 9
    tele = parse_agent_message(
        json.dumps(
            {
                "type": "telemetry",
                "seq": 3,
                "at_unix_ms": 1,
                "gpus": [{"uuid": "GPU-1", "index": 0, "ecc_uncorrectable": 2, "xids": [79]}],
                "peers": [{"node": "node-2", "rtt_ms": 1.5}],
            }
        )
    )
    assert isinstance(tele, Telemetry) and tele.gpus[0].xids == [79]


def test_portal_frames_round_trip() -> None:
    change = {"version": 3, "key": "nodes/n1", "op": "put", "value": {"status": "active"}}
    changes = parse_portal_message(json.dumps({"type": "changes", "changes": [change]}))
    assert isinstance(changes, Changes) and changes.changes[0].key == "nodes/n1"
    snap = parse_portal_message('{"type": "snapshot", "version": 4, "entries": []}')
    assert isinstance(snap, Snapshot) and "nodes/" in snap.prefixes


_KIND = (
    '{"caller": "x", "method": "/a/b", "code": "UNAUTHENTICATED", "count": 1, "first_unix_ms": 0, "last_unix_ms": 0}'
)
TOO_MANY_REFUSAL_KINDS = '{"type": "call_refusals", "seq": 1, "refusals": [' + ",".join([_KIND] * 65) + "]}"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"seq": 1}', "type: required"),
        ('{"type": "hello", "seq": 1, "node": "n1", "applied_version": NaN, "store": "raft"}', "NaN is not JSON"),
        ('{"type": "hello", "seq": 0, "node": "n1", "applied_version": 0, "store": "raft"}', "seq"),
        ('{"type": "hello", "seq": 1, "node": "N 1", "applied_version": 0, "store": "raft"}', "hello.node"),
        ('{"type": "hello", "seq": 1, "node": "n1", "applied_version": -1, "store": "raft"}', "applied_version"),
        ('{"type": "ack", "seq": 1, "version": 1, "extra": true}', "ack.extra"),
        ('{"type": "launch", "seq": 1}', "does not match any of the expected tags"),
        (
            '{"type": "telemetry", "seq": 1, "at_unix_ms": 1, "gpus": [{"uuid": "g", "index": 0, "utilization": 300}]}',
            "telemetry.gpus.0.utilization",
        ),
        ('{"type": "job_status", "seq": 1, "job_id": 3, "status": "exploded"}', "job_status.status"),
        ('{"type": "call_refusals", "seq": 1, "dropped": -1}', "call_refusals.dropped"),
        (
            '{"type": "call_refusals", "seq": 1, "refusals": [{"caller": "x", "method": "/a/b", "code": "denied", '
            '"count": 1, "first_unix_ms": 0, "last_unix_ms": 0}]}',
            "call_refusals.refusals.0.code",
        ),
        (TOO_MANY_REFUSAL_KINDS, "call_refusals.refusals: List should have at most 64 items"),
    ],
)
def test_bad_agent_frames_name_the_problem(raw: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem.replace(".", r"\.")):
        parse_agent_message(raw)


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="larger than"):
        parse_agent_message('{"type": "ack", "seq": 1, "version": 1, "pad": "' + "x" * (1 << 20) + '"}')


def test_bad_portal_frames_are_refused() -> None:
    with pytest.raises(ProtocolError, match=r"changes\.changes\.0\.key"):
        parse_portal_message('{"type": "changes", "changes": [{"version": 1, "key": "nodes has spaces", "op": "put"}]}')
    with pytest.raises(ProtocolError, match=r"changes\.changes\.0\.version"):
        parse_portal_message('{"type": "changes", "changes": [{"version": 0, "key": "nodes/a", "op": "put"}]}')
