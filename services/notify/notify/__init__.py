"""notify service (stub)."""
