from paylayer.migrations import run_env
from payments_service.tables import SCHEMA, metadata

run_env(metadata, SCHEMA)
