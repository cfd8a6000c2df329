"""Agent runtime adapters (claude first)."""
