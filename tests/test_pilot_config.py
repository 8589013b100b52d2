"""The pilot's configuration and its CLI: bad settings are refused by name."""

from __future__ import annotations

import pytest

from edgelab.pilot.config import PilotConfig


def test_cli_refuses_a_bad_setting_before_running() -> None:
    from typer.testing import CliRunner

    from edgeagent.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["pilot", "--hubs", "2", "--no-latency"])
    assert res.exit_code == 2
    assert "hubs must be >= 4" in res.output
    res = CliRunner().invoke(app, ["pilot", "--help"])
    assert res.exit_code == 0 and "--rounds" in res.output


def test_config_validation_names_the_setting() -> None:
    PilotConfig().validate()
    PilotConfig.small().validate()
    for bad, match in (
        ({"fractions": (0.6,)}, "fraction"),
        ({"attacks": ("gradient_ascent",)}, "unknown attack"),
        ({"modes": ("mean_of_means",)}, "unknown mode"),
        ({"group_size": 11}, "group_size"),
        ({"latency_delays_ms": (-1.0,)}, "latency_delays_ms"),
        ({"cohorts": 0}, "cohorts must be >= 1"),
        ({"seeds": 100}, "seeds must be in 1..99"),
    ):
        with pytest.raises(ValueError, match=match):
            PilotConfig(**bad).validate()
