"""TLS on every internal hop, with certificates made here: a purchase is granted through TLS
hops, and a client that cannot prove itself (no CA, no client certificate) is refused."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import stripe_event
from protos.accounts.v1 import accounts_pb2
from protos.entitlements.v1 import entitlements_pb2
from tests.conftest import CALLER_TOKENS, fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import eventually, new_buyer, post_stripe
from tests.stack import Stack


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key), cert, key


def make_leaf(
    common_name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> Pem:
    """One certificate for this machine's services: server and client use, 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert, key)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return Pem(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass(frozen=True)
class Pki:
    ca: Pem
    service: Pem
    stranger: Pem  # signed by a CA the services do not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, dict[str, str]]:
    ca, ca_cert, ca_key = make_ca("paylayer test CA")
    _, other_cert, other_key = make_ca("somebody else's CA")
    pki = Pki(
        ca=ca,
        service=make_leaf("paylayer", ca_cert, ca_key),
        stranger=make_leaf("intruder", other_cert, other_key),
    )
    directory = tmp_path_factory.mktemp("tls")
    files = {
        "GRPC_TLS_CA": ("ca.pem", pki.ca.cert),
        "GRPC_TLS_CERT": ("service.pem", pki.service.cert),
        "GRPC_TLS_KEY": ("service-key.pem", pki.service.key),
    }
    env = {}
    for setting, (name, content) in files.items():
        path = Path(directory) / name
        path.write_bytes(content)
        path.chmod(0o600)
        env[setting] = str(path)
    return pki, env


@pytest.fixture(scope="module")
def tls_stack(
    admin_database_url: str,
    bot_api: FakeBotApi,
    pki: tuple[Pki, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with fresh_database(admin_database_url) as url:
        settings = make_settings(url, bot_api)
        with running_stack(settings, tmp_path_factory.mktemp("tls-logs"), extra_env=pki[1]) as s:
            yield s


OPERATOR = (("authorization", f"Bearer {CALLER_TOKENS['operator']}"),)
CHECK = "/paylayer.entitlements.v1.EntitlementsService/CheckEntitlement"
RESOLVE = "/paylayer.accounts.v1.AccountsService/ResolveUser"


async def _call(
    channel: grpc.aio.Channel, method: str, request: object, reply_type: type
) -> object:
    rpc = channel.unary_unary(
        method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reply_type.FromString,  # type: ignore[attr-defined]
    )
    return await rpc(request, metadata=OPERATOR, timeout=5)


def _trusted(pki: Pki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=pki.service.key,
        certificate_chain=pki.service.cert,
    )


async def test_a_purchase_is_granted_through_tls_hops(
    tls_stack: Stack, pki: tuple[Pki, dict[str, str]]
) -> None:
    catalogue = load_catalogue(tls_stack.settings.catalogue_path)
    buyer = new_buyer()
    event = stripe_event("charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=buyer)
    async with aiohttp.ClientSession() as http:
        status, _ = await post_stripe(http, tls_stack, event)
    assert status == 200  # gateway → payments over TLS, committed

    async with grpc.aio.secure_channel(tls_stack.addrs["accounts"], _trusted(pki[0])) as channel:

        async def user() -> str:
            try:
                reply = await _call(
                    channel,
                    RESOLVE,
                    accounts_pb2.ResolveUserRequest(telegram_user_id=buyer),
                    accounts_pb2.ResolveUserResponse,
                )
            except grpc.aio.AioRpcError:
                return ""
            return str(reply.user.user_id)  # type: ignore[attr-defined]

        user_id = await eventually(user, bool)
    assert user_id

    async with grpc.aio.secure_channel(
        tls_stack.addrs["entitlements"], _trusted(pki[0])
    ) as channel:

        async def check() -> bool:
            reply = await _call(
                channel,
                CHECK,
                entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement="vip"),
                entitlements_pb2.CheckEntitlementResponse,
            )
            return bool(reply.active)  # type: ignore[attr-defined]

        assert await eventually(check, bool)


def _untrusted_clients(pki: Pki) -> dict[str, grpc.ChannelCredentials | None]:
    return {
        "plaintext": None,
        "no client certificate": grpc.ssl_channel_credentials(root_certificates=pki.ca.cert),
        "certificate of another CA": grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert,
            private_key=pki.stranger.key,
            certificate_chain=pki.stranger.cert,
        ),
    }


@pytest.mark.parametrize(
    "client", ["plaintext", "no client certificate", "certificate of another CA"]
)
@pytest.mark.parametrize("service", ["payments", "entitlements", "accounts"])
async def test_a_client_that_cannot_prove_itself_is_refused_even_with_a_good_token(
    tls_stack: Stack, pki: tuple[Pki, dict[str, str]], client: str, service: str
) -> None:
    credentials = _untrusted_clients(pki[0])[client]
    addr = tls_stack.addrs[service]
    channel = (
        grpc.aio.insecure_channel(addr)
        if credentials is None
        else grpc.aio.secure_channel(addr, credentials)
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(
                channel,
                CHECK,
                entitlements_pb2.CheckEntitlementRequest(user_id="u", entitlement="vip"),
                entitlements_pb2.CheckEntitlementResponse,
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_cli_health_check_speaks_tls(tls_stack: Stack) -> None:
    """`paylayer health` (what compose's health checks run) reads the same GRPC_TLS_* files."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylayer.cli",
        "health",
        "--json",
        env={**tls_stack.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out, err)
    assert b'"payments": "SERVING"' in out
