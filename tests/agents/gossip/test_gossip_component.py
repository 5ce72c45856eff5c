"""The `gossip:` config section: validation errors name the field; defaults build a working component."""

from __future__ import annotations

import base64
import os

import pytest

from agents.gossip.component import GossipComponent, GossipSection, mesh_status
from agents.meshd.component import ComponentConfigError, build_component


def test_defaults_build_a_component() -> None:
    comp = build_component("gossip", {"seeds": ["127.0.0.1:7946"], "keys": [base64.b64encode(os.urandom(32)).decode()]})
    assert isinstance(comp, GossipComponent)
    assert comp.name == "gossip"
    assert comp.section.swim_config().probe_interval == 0.5
    assert comp.section.keyring() is not None
    assert not mesh_status().degraded


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"seeds": ["nohost"]}, "gossip.seeds"),
        ({"bind": "127.0.0.1:99999"}, "gossip.bind"),
        ({"probe_interval_s": 0.2, "probe_timeout_s": 0.5}, "probe_timeout_s must be shorter"),
        ({"keys": ["c2hvcnQ="]}, "16, 24 or 32 bytes"),
        ({"gossip_nodes": 0}, "gossip.gossip_nodes"),
        ({"degraded_fraction": 1.5}, "gossip.degraded_fraction"),
        ({"no_such_option": 1}, "gossip.no_such_option"),
        ({"keyring_file": "/nonexistent/keys"}, "keyring_file"),
    ],
)
def test_bad_config_names_the_field(section: dict[str, object], needle: str) -> None:
    with pytest.raises(ComponentConfigError, match=needle.replace(".", r"\.")):
        build_component("gossip", section)


def test_keyring_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "keys"
    k1, k2 = os.urandom(32), os.urandom(16)
    path.write_text(f"{base64.b64encode(k1).decode()}\n{base64.b64encode(k2).decode()}\n")
    ring = GossipSection(keyring_file=str(path)).keyring()
    assert ring is not None and ring.primary == k1 and ring.keys == [k1, k2]
