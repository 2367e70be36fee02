"""Composition root of the accounts service: engine, units of work, use cases, servicer, and
the shared gRPC kit."""

from accounts_service.entitlements_client import TierCaps
from accounts_service.retention import forget_old_history
from accounts_service.servicer import AccountsServicer
from accounts_service.store import UnitOfWork
from accounts_service.use_cases import Accounts
from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.grpc_client import open_channel
from paylayer.grpc_server import GrpcService
from paylayer.settings import Settings
from paylayer.tls import GrpcTls
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc


def build(settings: Settings) -> GrpcService:
    engine = create_engine(
        settings.database_url,
        application_name="accounts",
        max_connections=settings.database_pool_size,
    )
    entitlements = open_channel(
        settings.entitlements_addr, settings.internal_token, tls=GrpcTls.from_settings(settings)
    )

    def begin(*, single_statement: bool = False) -> UnitOfWork:
        return UnitOfWork(engine, single_statement=single_statement)

    accounts = Accounts(begin, TierCaps(entitlements, load_catalogue(settings.catalogue_path)))
    servicer = AccountsServicer(accounts)
    return GrpcService(
        name="accounts",
        full_service_name=accounts_pb2.DESCRIPTOR.services_by_name["AccountsService"].full_name,
        settings=settings,
        engine=engine,
        add_servicer=lambda server: accounts_pb2_grpc.add_AccountsServiceServicer_to_server(
            servicer, server
        ),
        background=[lambda: forget_old_history(accounts, settings.snapshot_history_days)],
        on_stop=[entitlements.close],
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )
