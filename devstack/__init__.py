"""The embedded development stack: a real PostgreSQL and a Tansu broker as local processes."""
