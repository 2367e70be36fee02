"""`python -m accounts_service`: serve until SIGTERM."""

from accounts_service.server import build
from paylayer.grpc_server import run_main

if __name__ == "__main__":
    run_main("accounts", build)
