from accounts_service.tables import SCHEMA, metadata
from paylayer.migrations import run_env

run_env(metadata, SCHEMA)
