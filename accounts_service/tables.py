"""The accounts schema: this service's tables, and nothing of any other service."""

from sqlalchemy import MetaData

SCHEMA = "accounts"
metadata = MetaData(schema=SCHEMA)
