"""``edgeagent devices scan``: which BLE wearables are in range, and what they offer.

The first thing a field engineer checks when a strap "does not connect" is
whether the hub hears it at all, how strongly, and which services it
advertises; this verb answers that through the same bleak stack the agent uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, JSON_OPTION, echo_json, fail, load_or_exit
from edgeagent.errors import SourceError

devices_app = typer.Typer(help="BLE wearables in range.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")

_SERVICE_NAMES = {
    "0000180d-0000-1000-8000-00805f9b34fb": "heart-rate",
    "00001809-0000-1000-8000-00805f9b34fb": "thermometer",
    "0000180f-0000-1000-8000-00805f9b34fb": "battery",
    "fb005c80-02e7-f387-1cad-8acd2d8df0c8": "polar-pmd",
}
_TIMEOUT: Any = typer.Option(3.0, "--timeout", "-t", help="Seconds to listen.")
_SERVICE: Any = typer.Option(None, "--service", "-s", help="Only devices advertising this UUID.")
_NAME: Any = typer.Option(None, "--name", "-n", help="Only names matching this regex.")
_ADDRESS: Any = typer.Option(None, "--address", "-a", help="Only these addresses (repeatable).")
_ADAPTER: Any = typer.Option(
    None, "--adapter", help="Adapter to scan with (hci0, ...; default: the config's, else BlueZ's)."
)


@devices_app.command("scan")
def scan_cmd(
    timeout: float = _TIMEOUT,
    service: list[str] | None = _SERVICE,
    name: str | None = _NAME,
    address: list[str] | None = _ADDRESS,
    adapter: str | None = _ADAPTER,
    config: Path | None = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List advertisers in range: name, address, RSSI and services (strongest first)."""
    from edgeagent.sources.ble import DeviceFilter, scan
    from edgeagent.sources.bluez import system_bus_problem

    try:
        flt = DeviceFilter(
            service_uuids=frozenset(s.lower() for s in service or ()),
            name_pattern=name,
            addresses=frozenset(address or ()),
        )
    except ValueError as e:
        raise fail(SourceError("scan", "bad_filter", str(e)), as_json) from e
    if adapter is None and config is not None:
        adapter = load_or_exit(config, as_json).devices.ble.adapter
    problem = system_bus_problem()
    if problem is not None:
        raise fail(SourceError("ble", "no_system_bus", problem), as_json, 1)
    try:
        found = scan(timeout, flt, adapter)
    except Exception as e:  # no adapter, BlueZ off: say so, do not trace back
        msg = (
            f"BLE scan on {adapter or 'the default adapter'} failed: {type(e).__name__}: {e}; "
            "check that bluetoothd runs and the adapter is powered (bluetoothctl show)"
        )
        raise fail(SourceError("ble", "scan_failed", msg), as_json, 1) from e
    if as_json:
        echo_json([r.as_dict() for r in found])
        return
    table = Table(title=f"BLE devices ({len(found)})")
    for col in ("name", "address", "rssi", "services"):
        table.add_column(col)
    for r in found:
        services = ", ".join(_SERVICE_NAMES.get(u.lower(), u) for u in r.services)
        table.add_row(r.name or "-", r.address, str(r.rssi), services)
    Console().print(table)
