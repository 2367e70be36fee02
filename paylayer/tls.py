"""TLS for the internal gRPC hops, from GRPC_TLS_CERT, GRPC_TLS_KEY and GRPC_TLS_CA.

Any of the three set turns TLS on for this process. Servers present the certificate and key and,
given the CA, require client certificates signed by it; clients verify servers against the CA and
present their own certificate when they have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from paylayer.settings import ConfigError, Settings


def _read(setting: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {path} ({error.strerror})") from None


@dataclass(frozen=True)
class GrpcTls:
    cert: bytes | None
    key: bytes | None
    ca: bytes | None

    @classmethod
    def from_settings(cls, settings: Settings) -> GrpcTls | None:
        """None when TLS is off (plaintext, as in `paylayer dev` and the tests)."""
        if not (settings.grpc_tls_cert or settings.grpc_tls_key or settings.grpc_tls_ca):
            return None
        if bool(settings.grpc_tls_cert) != bool(settings.grpc_tls_key):
            raise ConfigError("GRPC_TLS_CERT and GRPC_TLS_KEY go together: set both or neither")
        return cls(
            cert=_read("GRPC_TLS_CERT", settings.grpc_tls_cert),
            key=_read("GRPC_TLS_KEY", settings.grpc_tls_key),
            ca=_read("GRPC_TLS_CA", settings.grpc_tls_ca),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert is None or self.key is None:
            raise ConfigError("a gRPC server with TLS needs GRPC_TLS_CERT and GRPC_TLS_KEY")
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca,
            require_client_auth=self.ca is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
