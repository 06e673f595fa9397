"""The points schema."""

from sqlalchemy import MetaData

from shared.db import shared_tables

SCHEMA = "points"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)
