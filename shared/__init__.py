"""The library every membership service shares: settings, events, database, outbox,
consumer runner, API plumbing. A service contributes handlers and tables, nothing more."""
