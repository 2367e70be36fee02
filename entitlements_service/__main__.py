"""`python -m entitlements_service`: serve until SIGTERM."""

from entitlements_service.server import build
from paylayer.grpc_server import run_main

if __name__ == "__main__":
    run_main("entitlements", build, required=("DATABASE_URL",))
