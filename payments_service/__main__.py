"""`python -m payments_service`: serve until SIGTERM."""

from paylayer.grpc_server import run_main
from payments_service.server import build

if __name__ == "__main__":
    run_main("payments", build)
