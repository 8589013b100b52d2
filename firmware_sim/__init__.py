"""Firmware simulator: stands in for wearable sensors over BLE and serial. Never imports edgeagent."""
