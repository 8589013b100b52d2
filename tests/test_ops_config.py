"""Config schema: the shipped example loads; every mistake names key, value and fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import ConfigError, ConfigErrors
from edgeagent.ops.config import REDACTED, load_config, parse_config, redacted, to_toml
from tests.plugins.ops import EXAMPLE_CONFIG


def _base() -> dict[str, Any]:
    return {"agent": {"box_id": "box-1"}}


def _err(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value


def test_example_config_loads_with_its_documented_values() -> None:
    cfg = load_config(EXAMPLE_CONFIG)
    assert cfg.agent.box_id == "box-0001"
    assert cfg.devices.serial[0].port == "/dev/ttyUSB0"
    assert cfg.devices.ble.device[0].address == "A0:9E:1A:00:00:01"
    assert cfg.detection.execution_providers == ("CPUExecutionProvider",)
    assert cfg.detection.thresholds == {"clinical": 0.6}
    assert cfg.windows.hop_s <= cfg.windows.length_s


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config(_base())
    assert cfg.agent.state_dir == Path("/var/lib/edgeagent")
    assert cfg.detection.execution_providers == ("CPUExecutionProvider",)
    assert cfg.federation.enabled is False
    assert cfg.control.socket_path == Path("/run/edgeagent/control.sock")


@pytest.mark.parametrize(
    ("patch", "key", "value", "words"),
    [
        ({"windows": {"hop_s": 20.0}}, "windows.hop_s", 20.0, "must not exceed length_s"),
        ({"windows": {"length_s": -1}}, "windows.length_s", -1, "greater than 0"),
        ({"windows": {"length_s": "ten"}}, "windows.length_s", "ten", "use a number"),
        ({"agent": {"box_id": "bad/id"}}, "agent.box_id", "bad/id", "MQTT topics"),
        ({"agent": {"box_id": "b", "stat_dir": "/x"}}, "agent.stat_dir", "/x", "state_dir"),
        ({"agent": {"box_id": "b", "state_dir": "rel"}}, "agent.state_dir", "rel", "absolute"),
        ({"agent": {"box_id": "b", "log_level": "LOUD"}}, "agent.log_level", "LOUD", "one of"),
        ({"federation": {"broker_port": 70000}}, "federation.broker_port", 70000, "65535"),
        ({"federation": {"enabled": True}}, "federation.ca_file", None, "needs ca_file"),
        ({"federation": {"cert_file": "/c.pem"}}, "federation.key_file", None, "both"),
        ({"federation": {"topic_prefix": "a/#"}}, "federation.topic_prefix", "a/#", "wildcards"),
        (
            {"detection": {"execution_providers": ["CUDA"]}},
            "detection.execution_providers",
            ["CUDA"],
            "ExecutionProvider",
        ),
        ({"detection": {"execution_providers": []}}, "detection.execution_providers", [], "least"),
        ({"status": {"stall_after_s": 0.5}}, "status.stall_after_s", 0.5, "windows.hop_s"),
        (
            {"devices": {"ble": {"device": [{"address": "zz", "device_id": "a", "patient": "p"}]}}},
            "devices.ble.device[0].address",
            "zz",
            "AA:BB",
        ),
        (
            {"devices": {"serial": [{"port": "ttyUSB0", "device_id": "t", "patient": "p"}]}},
            "devices.serial[0].port",
            "ttyUSB0",
            "absolute",
        ),
        ({"control": {"socket_path": "/" + "x" * 120}}, "control.socket_path", None, "107"),
        ({"detection": {"thresholds": {"af": 0.4}}}, "detection.thresholds", None, "clinical"),
        ({"detection": {"thresholds": {"fault": 1.5}}}, "detection.thresholds", None, "[0, 1]"),
        ({"detection": {"thresholds": {"novelty": 0}}}, "detection.thresholds", None, "> 0"),
        ({"aggregator": {"robust": "mean"}}, "aggregator.robust", "mean", "reputation"),
    ],
)
def test_errors_name_key_value_and_fix(
    patch: dict[str, Any], key: str, value: object, words: str
) -> None:
    data = _base()
    for section, body in patch.items():
        data[section] = {**data.get(section, {}), **body}
    err = _err(data)
    assert err.key == key
    if value is not None:
        assert err.value == value
    assert words in err.problem
    assert key in str(err)


def test_duplicate_device_ids_and_ports_are_rejected() -> None:
    dev = {"port": "/dev/ttyUSB0", "device_id": "t1", "patient": "p"}
    err = _err({**_base(), "devices": {"serial": [dev, {**dev, "device_id": "t2"}]}})
    assert "listed twice" in err.problem
    err = _err({**_base(), "devices": {"serial": [dev, {**dev, "port": "/dev/ttyUSB1"}]}})
    assert "used twice" in err.problem


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config({"agent": {"box_id": "x y"}, "windows": {"length_s": 0}, "bogus": {}})
    keys = {e.key for e in info.value.errors}
    assert keys == {"agent.box_id", "windows.length_s", "bogus"}
    assert all(k in str(info.value) for k in keys)


def test_missing_section_key_says_add_it() -> None:
    err = _err({"agent": {}})
    assert err.key == "agent.box_id"
    assert "add this key" in err.problem


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\nbox_id = 1\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


def test_secrets_are_redacted_and_round_trip_as_toml() -> None:
    data = {
        **_base(),
        "federation": {"password": "hunter2", "key_password": "s3cret", "username": "u"},
        "detection": {"thresholds": {"clinical": 0.3}},
        "devices": {"serial": [{"port": "/dev/ttyUSB0", "device_id": "t1", "patient": "p1"}]},
    }
    cfg = parse_config(data)
    shown = redacted(cfg)
    assert shown["federation"]["password"] == REDACTED
    assert shown["federation"]["key_password"] == REDACTED
    assert shown["federation"]["username"] == "u"
    text = to_toml(shown)
    assert "hunter2" not in text and "s3cret" not in text
    assert "hunter2" not in repr(cfg)  # SecretStr hides it from logs too
    back = tomllib.loads(text)
    assert back["devices"]["serial"][0]["device_id"] == "t1"
    assert back["detection"]["thresholds"] == {"clinical": 0.3}
    # The rendered file minus redacted secrets is itself a valid config.
    del back["federation"]["password"], back["federation"]["key_password"]
    assert parse_config(back) == parse_config({**data, "federation": {"username": "u"}})


def test_unset_secret_stays_none_in_show() -> None:
    shown = redacted(parse_config(_base()))
    assert shown["federation"]["password"] is None
