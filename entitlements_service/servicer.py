"""gRPC adapter of the entitlements service: proto in, domain call, proto out."""

from protos.entitlements.v1 import entitlements_pb2_grpc


class EntitlementsServicer(entitlements_pb2_grpc.EntitlementsServiceServicer):
    pass
