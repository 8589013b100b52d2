"""Firmware simulator: wearable sensors over BLE and serial. Never imports edgeagent."""
