"""The benefits schema."""

from sqlalchemy import MetaData

from shared.db import shared_tables

SCHEMA = "benefits"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)
