"""The payments schema: this service's tables, and nothing of any other service."""

from sqlalchemy import MetaData

SCHEMA = "payments"
metadata = MetaData(schema=SCHEMA)
