"""Composition root of the accounts service: engine, servicer, and the shared gRPC kit."""

from accounts_service.servicer import AccountsServicer
from paylayer.db import create_engine
from paylayer.grpc_server import GrpcService
from paylayer.settings import Settings
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc


def build(settings: Settings) -> GrpcService:
    engine = create_engine(settings.database_url, application_name="accounts")
    servicer = AccountsServicer()
    return GrpcService(
        name="accounts",
        full_service_name=accounts_pb2.DESCRIPTOR.services_by_name["AccountsService"].full_name,
        internal_token=settings.internal_token,
        engine=engine,
        add_servicer=lambda server: accounts_pb2_grpc.add_AccountsServiceServicer_to_server(
            servicer, server
        ),
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )
