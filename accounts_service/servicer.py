"""gRPC adapter of the accounts service: proto in, domain call, proto out."""

from protos.accounts.v1 import accounts_pb2_grpc


class AccountsServicer(accounts_pb2_grpc.AccountsServiceServicer):
    pass
