"""Fixtures for the serial tests (register shared fixtures here)."""
