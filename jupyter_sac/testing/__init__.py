"""Test helpers that speak real wire protocols (used by tests/ and bench/)."""
