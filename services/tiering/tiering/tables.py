"""The tiering schema."""

from sqlalchemy import MetaData

from shared.db import shared_tables

SCHEMA = "tiering"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)
