"""Run Alembic, one tree per service (`<module>/migrations`), each versioned in its own schema."""

from __future__ import annotations

import importlib

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData

from paylayer.ops.services import MIGRATED, MODULES

# The services with a migration tree, by name.
SERVICES = MIGRATED


def alembic_config(service: str, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", f"{MODULES[service]}:migrations")
    config.attributes["database_url"] = database_url
    return config


def upgrade(service: str, database_url: str, revision: str = "head") -> None:
    """Blocking; call it from a thread when an event loop is running."""
    command.upgrade(alembic_config(service, database_url), revision)


def upgrade_all(database_url: str) -> None:
    for service in SERVICES:
        upgrade(service, database_url)


def service_metadata(service: str) -> MetaData:
    metadata: MetaData = importlib.import_module(f"{MODULES[service]}.tables").metadata
    return metadata
