"""points service (stub)."""
