"""Fixtures for the mqtt tests (register shared fixtures here)."""
