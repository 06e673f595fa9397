"""The notify schema."""

from sqlalchemy import MetaData

from shared.db import shared_tables

SCHEMA = "notify"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)
