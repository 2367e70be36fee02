"""Composition root of the payments service: engine, servicer, and the shared gRPC kit."""

from paylayer.db import create_engine
from paylayer.grpc_server import GrpcService
from paylayer.settings import Settings
from payments_service.servicer import PaymentsServicer
from protos.payments.v1 import payments_pb2, payments_pb2_grpc


def build(settings: Settings) -> GrpcService:
    engine = create_engine(settings.database_url, application_name="payments")
    servicer = PaymentsServicer()
    return GrpcService(
        name="payments",
        full_service_name=payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name,
        internal_token=settings.internal_token,
        engine=engine,
        add_servicer=lambda server: payments_pb2_grpc.add_PaymentsServiceServicer_to_server(
            servicer, server
        ),
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )
