"""Fixtures for the ops tests (register shared fixtures here)."""
