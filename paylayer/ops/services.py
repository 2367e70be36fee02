"""The one list of Paylayer's processes: their names, modules and which have a schema."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    module: str  # run as `python -m <module>`
    # A gRPC server with a schema of its own (migrations in `<module>/migrations`).
    grpc: bool


# In start order; stopped in the reverse, so the console and then the gateway go first.
SERVICES = (
    Service("accounts", "accounts_service", grpc=True),
    Service("entitlements", "entitlements_service", grpc=True),
    Service("payments", "payments_service", grpc=True),
    Service("gateway", "gateway", grpc=False),
    Service("console", "console", grpc=False),  # the operator console, after what it reads
)
MODULES = {service.name: service.module for service in SERVICES}
GRPC_SERVICES = tuple(service.name for service in SERVICES if service.grpc)
# Every gRPC service owns a schema; the gateway keeps no state.
MIGRATED = GRPC_SERVICES
