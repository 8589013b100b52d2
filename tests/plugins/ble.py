"""Fixtures for the ble tests (register shared fixtures here)."""
