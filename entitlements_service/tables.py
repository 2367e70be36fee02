"""The entitlements schema: this service's tables, and nothing of any other service."""

from sqlalchemy import MetaData

SCHEMA = "entitlements"
metadata = MetaData(schema=SCHEMA)
