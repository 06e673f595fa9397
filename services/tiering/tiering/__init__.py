"""tiering service (stub)."""
