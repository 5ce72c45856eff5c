"""The agent's digest of refused calls for the portal (sans-IO): identical refusals fold into one counted kind, the
number of kinds is bounded whatever callers send, and each report starts afresh."""

from __future__ import annotations

from agents.portal_link.refusals import RefusalDigest
from agents.proto.portal_link import dump, parse_agent_message
from agents.security.authz import Refusal


def refusal(
    caller: str = "spiffe://t/node/r1", method: str = "/infermesh.v1.Store/Put", peer: str = "ipv4:a:1"
) -> Refusal:
    return Refusal(method=method, caller=caller, peer=peer, code="PERMISSION_DENIED", reason="may not call")


def test_a_flood_of_one_kind_is_one_counted_entry() -> None:
    digest = RefusalDigest()
    assert digest.take() is None
    for i in range(10_000):
        digest.add(refusal(peer=f"ipv4:a:{i}"), now_ms=1000 + i)
    frame = digest.take()
    assert frame is not None and frame.dropped == 0 and len(frame.refusals) == 1
    kind = frame.refusals[0]
    assert (kind.count, kind.first_unix_ms, kind.last_unix_ms, kind.peer) == (10_000, 1000, 10_999, "ipv4:a:9999")
    assert parse_agent_message(dump(frame)) == frame  # what the agent sends, the portal accepts
    assert digest.take() is None  # reported once


def test_kinds_are_bounded_and_the_rest_counted() -> None:
    digest = RefusalDigest(max_kinds=3)
    for i in range(10):
        digest.add(refusal(caller=f"spiffe://t/node/n{i}"), now_ms=i)
    digest.add(refusal(caller="spiffe://t/node/n0"), now_ms=99)  # a known kind still counts
    frame = digest.take()
    assert frame is not None and frame.dropped == 7
    assert [(k.caller, k.count) for k in frame.refusals] == [
        ("spiffe://t/node/n0", 2), ("spiffe://t/node/n1", 1), ("spiffe://t/node/n2", 1)
    ]  # fmt: skip


def test_a_caller_without_a_parsable_certificate_is_named_by_its_address() -> None:
    digest = RefusalDigest()
    digest.add(refusal(caller="", peer="ipv6:[::1]:5"), now_ms=1)
    frame = digest.take()
    assert frame is not None and frame.refusals[0].caller == "ipv6:[::1]:5"
