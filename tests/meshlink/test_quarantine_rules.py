"""The sans-IO quarantine rules: each rule, the sample counts, hysteresis and pinning."""

from __future__ import annotations

from meshweb.fleet.quarantine import Gpu, Peer, Rules, Sample, State, decide, findings, sample_from_telemetry

RULES = Rules(thermal_samples=3, throttle_samples=4, network_samples=2, cooldown_s=60.0)
ACTIVE = State(status="active")


def healthy(at: float) -> Sample:
    return Sample(at, (Gpu("GPU-0", ecc_uncorrectable=0, temperature_c=40.0, slowdown_temp_c=90.0),))


def test_a_healthy_node_stays_active() -> None:
    samples = [healthy(t) for t in range(10)]
    assert findings(samples, RULES) == []
    assert decide(ACTIVE, samples, 10.0, RULES).action == "none"


def test_uncorrectable_ecc_quarantines_at_once() -> None:
    samples = [healthy(0), Sample(1, (Gpu("GPU-0", ecc_uncorrectable=2),))]
    d = decide(ACTIVE, samples, 1.0, RULES)
    assert d.action == "quarantine"
    assert d.reason == "GPU GPU-0: 2 uncorrectable ECC errors"
    assert d.findings[0].rule == "ecc" and d.last_unhealthy_at == 1


def test_fatal_xid_quarantines_and_benign_xid_does_not() -> None:
    benign = [healthy(0), Sample(1, (Gpu("GPU-0", xids=(13, 31)),))]
    assert decide(ACTIVE, benign, 1.0, RULES).action == "none"
    fatal = [healthy(0), Sample(1, (Gpu("GPU-0", xids=(13, 79)),))]
    d = decide(ACTIVE, fatal, 1.0, RULES)
    assert d.action == "quarantine" and d.reason == "GPU GPU-0: fatal Xid 79"
    assert d.findings[0].evidence == {"gpu": "GPU-0", "xids": [79]}


def test_thermal_needs_several_consecutive_hot_samples() -> None:
    def hot(at: float) -> Sample:
        return Sample(at, (Gpu("GPU-0", temperature_c=92.0, slowdown_temp_c=90.0),))

    broken_run = [hot(0), hot(1), healthy(2), hot(3), hot(4)]
    assert decide(ACTIVE, broken_run, 5.0, RULES).action == "none"
    run = [hot(0), hot(1), hot(2)]
    d = decide(ACTIVE, run, 3.0, RULES)
    assert d.action == "quarantine" and d.findings[0].rule == "thermal"


def test_persistent_throttling_but_not_idle_clocks() -> None:
    idle = [Sample(t, (Gpu("GPU-0", throttle_reasons=("gpu_idle",)),)) for t in range(6)]
    assert decide(ACTIVE, idle, 6.0, RULES).action == "none"
    slow = [Sample(t, (Gpu("GPU-0", throttle_reasons=("hw_slowdown",)),)) for t in range(4)]
    d = decide(ACTIVE, slow, 4.0, RULES)
    assert d.action == "quarantine" and "throttled (hw_slowdown)" in d.reason


def test_network_degradation_to_most_peers() -> None:
    def links(at: float, rtts: list[float]) -> Sample:
        return Sample(at, peers=tuple(Peer(f"n{i}", rtt_ms=r) for i, r in enumerate(rtts)))

    one_bad_link = [links(t, [500.0, 1.0, 1.0]) for t in range(5)]
    assert decide(ACTIVE, one_bad_link, 5.0, RULES).action == "none"
    lossy = [Sample(t, peers=(Peer("a", loss=0.3), Peer("b", loss=0.2), Peer("c", loss=0.0))) for t in range(2)]
    d = decide(ACTIVE, lossy, 2.0, RULES)
    assert d.action == "quarantine" and d.findings[0].rule == "network"


def test_release_only_after_a_healthy_cooldown() -> None:
    fault = Sample(100, (Gpu("GPU-0", ecc_uncorrectable=1),))
    quarantined = State(status="quarantined", quarantined_by_rules=True, last_unhealthy_at=100.0)
    assert decide(quarantined, [fault, healthy(105)], 106.0, RULES).action == "hold"
    # healthy samples again, but for less than the cool-down
    samples = [healthy(t) for t in range(110, 150, 5)]
    assert decide(quarantined, samples, 150.0, RULES).action == "none"
    # healthy for the whole cool-down: released
    samples = [healthy(t) for t in range(110, 170, 5)]
    d = decide(quarantined, samples, 170.0, RULES)
    assert d.action == "release" and "cool-down 60s" in d.reason
    # time alone is not enough: the healthy samples must cover the cool-down
    assert decide(quarantined, [healthy(110)], 500.0, RULES).action == "none"
    # once released, the faults it was released from do not quarantine it again; a new one does
    released = State(status="active", ignore_before=170.0)
    assert decide(released, [fault, *samples], 175.0, RULES).action == "none"
    again = Sample(180, (Gpu("GPU-0", ecc_uncorrectable=1),))
    assert decide(released, [fault, *samples, again], 181.0, RULES).action == "quarantine"


def test_pinned_or_manual_quarantines_are_never_released_by_the_rules() -> None:
    samples = [healthy(t) for t in range(0, 400, 10)]
    pinned = State(status="quarantined", quarantined_by_rules=True, pinned=True, last_unhealthy_at=0.0)
    assert decide(pinned, samples, 400.0, RULES).action == "none"
    manual = State(status="quarantined", quarantined_manually=True)
    assert decide(manual, samples, 400.0, RULES).action == "none"


def test_offline_nodes_and_nodes_without_samples_are_not_judged() -> None:
    fault = [Sample(1, (Gpu("GPU-0", ecc_uncorrectable=1),))]
    assert decide(State(status="offline"), fault, 2.0, RULES).action == "none"
    assert decide(ACTIVE, [], 2.0, RULES).action == "none"


def test_samples_from_stored_telemetry() -> None:
    s = sample_from_telemetry(
        5.0,
        {
            "gpus": [{"uuid": "GPU-0", "ecc_uncorrectable": 0, "xids": [94], "throttle_reasons": ["hw_slowdown"]}],
            "peers": [{"node": "n2", "rtt_ms": 3.0, "loss": None}],
        },
    )
    assert s.gpus[0].xids == (94,) and s.peers[0].rtt_ms == 3.0
    assert decide(ACTIVE, [s], 5.0, RULES).reason == "GPU GPU-0: fatal Xid 94"


def test_gossip_measured_loss_reaches_the_network_rule_through_telemetry() -> None:
    from agents.portal_link.telemetry import peers

    # what gossip measured on a node that lost most of its links: loss per peer, RTT where probes came back
    links = {"n2": (0.004, 0.1), "n3": (None, 1.0), "n4": (0.2, 0.5)}
    reported = peers("n1", ["n2", "n3", "n4", "n5"], lambda a, b: 0.001, links)
    by_node = {p.node: p for p in reported}
    assert by_node["n2"].rtt_ms == 4.0 and by_node["n2"].loss == 0.1
    assert by_node["n3"].rtt_ms == 1.0 and by_node["n3"].loss == 1.0  # no probe came back: the estimate's RTT
    assert by_node["n5"].loss is None and by_node["n5"].rtt_ms == 1.0  # not measured yet
    samples = [sample_from_telemetry(t, {"peers": [p.model_dump() for p in reported]}) for t in (100.0, 101.0, 102.0)]
    d = decide(State("active"), samples, 103.0, RULES)
    assert d.action == "quarantine" and d.findings[0].rule == "network"
    assert {p["node"] for p in d.findings[0].evidence["peers"]} == {"n2", "n3", "n4"}  # n5 is fine
    assert peers("n1", ["n2"], None, None) == []  # no gossip: nothing to report
