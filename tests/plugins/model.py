"""Fixtures for the model tests (register shared fixtures here)."""
