"""benefits service (stub)."""
