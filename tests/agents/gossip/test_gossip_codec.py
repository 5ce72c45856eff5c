"""Wire codec and keyring: round trips, size bounds, and fuzzing (hypothesis) — bad bytes only ever raise the
codec's or keyring's own errors, and bad packets never change a core's membership."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.gossip.codec import (
    MAX_META_BYTES,
    CodecError,
    decode_packet,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
)
from agents.gossip.keyring import Keyring, KeyringError, Replayed, Unauthenticated, parse_key
from agents.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    MemberState,
    Nack,
    Ping,
    PushPull,
    Summary,
    Suspect,
)
from agents.gossip.swim import Swim

names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=40)
addrs = st.tuples(st.sampled_from(["127.0.0.1", "10.1.2.3", "node-a.local"]), st.integers(1, 65535))
u32 = st.integers(0, 2**32 - 1)
messages = st.one_of(
    st.builds(Ping, u32, names, names, addrs),
    st.builds(IndirectPing, u32, names, addrs, st.booleans(), names, addrs),
    st.builds(Ack, u32, st.binary(max_size=64)),
    st.builds(Nack, u32),
    st.builds(Suspect, u32, names, names),
    st.builds(Alive, u32, names, addrs, st.binary(max_size=MAX_META_BYTES)),
    st.builds(Dead, u32, names, names),
    st.builds(Summary, names, st.integers(0, 2**64 - 1), st.binary(max_size=300), st.just(False)),
)


@given(st.lists(messages, min_size=1, max_size=8))
def test_packet_roundtrip(msgs: list[object]) -> None:
    assert decode_packet(encode_packet(msgs)) == msgs  # type: ignore[arg-type]


@given(st.lists(messages, min_size=1, max_size=6), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_truncation_and_bit_flips_raise_codec_error_only(msgs: list[object], data: st.DataObject) -> None:
    packet = encode_packet(msgs)  # type: ignore[arg-type]
    cut = data.draw(st.integers(0, len(packet) - 1))
    with pytest.raises(CodecError):
        decode_packet(packet[:cut])
    flipped = bytearray(packet)
    pos = data.draw(st.integers(0, len(packet) - 1))
    flipped[pos] ^= data.draw(st.integers(1, 255))
    # A flip may still decode (e.g. inside a payload); what matters is that nothing but CodecError escapes.
    with contextlib.suppress(CodecError):
        decode_packet(bytes(flipped))


@given(st.binary(max_size=2000))
def test_random_bytes_never_escape_as_other_errors(blob: bytes) -> None:
    for fn in (decode_packet, decode_push_pull):
        with contextlib.suppress(CodecError):
            fn(blob)


def test_size_bounds_are_enforced() -> None:
    with pytest.raises(CodecError, match="exceeds limit 100"):
        decode_packet(encode_packet([Alive(1, "a", ("h", 1), b"x" * 200)]), limit=100)
    with pytest.raises(CodecError, match="node metadata is 513 bytes"):
        encode_packet([Alive(1, "a", ("h", 1), b"x" * 513)])
    with pytest.raises(CodecError, match="limit 128"):
        encode_packet([Suspect(1, "n" * 129, "x")])
    with pytest.raises(CodecError, match="empty node name"):
        decode_packet(encode_packet([Dead(1, "", "x")]))
    with pytest.raises(CodecError, match="trailing"):
        decode_packet(encode_packet([Nack(1)]) + b"\x00")


def test_push_pull_roundtrip() -> None:
    pp = PushPull(
        True,
        tuple(MemberRecord(f"n{i}", ("127.0.0.1", 7000 + i), i, MemberState(i % 4), b"m") for i in range(50)),
        (Summary("n1", 3, os.urandom(5000)),),
    )
    assert decode_push_pull(encode_push_pull(pp)) == pp


@given(st.binary(min_size=0, max_size=400))
@settings(max_examples=50)
def test_core_membership_unchanged_by_fuzzed_packets(blob: bytes) -> None:
    core = Swim("a", ("127.0.0.1", 1), rng=random.Random(0), now=0.0)
    core.bootstrap(0.0, [MemberRecord("b", ("127.0.0.1", 2), 0, MemberState.ALIVE)])
    before = {n: (m.state, m.incarnation) for n, m in core.members.items()}
    ring = Keyring([b"k" * 32])
    for data in (blob, b"\x01" + blob):
        try:
            msgs = decode_packet(ring.open(data))
        except (Unauthenticated, Replayed, CodecError):
            continue
        core.receive(1.0, ("127.0.0.1", 9), msgs)
    assert {n: (m.state, m.incarnation) for n, m in core.members.items()} == before


def test_keyring_rotation_replay_and_age() -> None:
    k1, k2 = os.urandom(16), os.urandom(32)
    clock = [1000.0]
    a, b = Keyring([k1], clock=lambda: clock[0]), Keyring([k1], clock=lambda: clock[0])
    sealed = a.seal(b"hello")
    assert b.open(sealed) == b"hello"
    with pytest.raises(Replayed, match="already seen"):
        b.open(sealed)
    b.add_key(k2)
    a.add_key(k2)
    a.use_key(k2)
    assert b.open(a.seal(b"x")) == b"x"
    b.use_key(k2)
    b.remove_key(k1)
    assert b.open(a.seal(b"y")) == b"y"
    with pytest.raises(Unauthenticated):
        Keyring([k1]).open(a.seal(b"z"))
    old = a.seal(b"late")
    clock[0] += 120
    with pytest.raises(Replayed, match="off"):
        b.open(old)
    with pytest.raises(KeyringError, match="primary"):
        b.remove_key(k2)
    with pytest.raises(KeyringError, match="16, 24 or 32"):
        parse_key("c2hvcnQ=")
    with pytest.raises(KeyringError, match="base64"):
        parse_key("not base64!!")


def test_replay_window_accepts_reordering_within_window() -> None:
    a, b = Keyring([b"k" * 32]), Keyring([b"k" * 32])
    packets = [a.seal(bytes([i])) for i in range(10)]
    for p in reversed(packets):
        b.open(p)
    for p in packets:
        with pytest.raises(Replayed):
            b.open(p)
