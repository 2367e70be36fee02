"""Composition root of the entitlements service: engine, servicer, and the shared gRPC kit."""

from entitlements_service.servicer import EntitlementsServicer
from paylayer.db import create_engine
from paylayer.grpc_server import GrpcService
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc


def build(settings: Settings) -> GrpcService:
    engine = create_engine(settings.database_url, application_name="entitlements")
    servicer = EntitlementsServicer()
    return GrpcService(
        name="entitlements",
        full_service_name=entitlements_pb2.DESCRIPTOR.services_by_name[
            "EntitlementsService"
        ].full_name,
        internal_token=settings.internal_token,
        engine=engine,
        add_servicer=lambda server: entitlements_pb2_grpc.add_EntitlementsServiceServicer_to_server(
            servicer, server
        ),
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )
