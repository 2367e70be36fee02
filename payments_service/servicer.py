"""gRPC adapter of the payments service: proto in, domain call, proto out."""

from protos.payments.v1 import payments_pb2_grpc


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    pass
