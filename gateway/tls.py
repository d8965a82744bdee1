"""The gateway's TLS: one ``ServerTls`` built from the settings' certificate and key, which both ports
serve with (gRPC's server credentials, the HTTP side's ``ssl.SSLContext``).

Built before anything binds, so that a key that is not the certificate's, or a file that is not PEM, is
refused naming the setting, instead of being a handshake failure every client sees. No client
certificate is asked for: clients authenticate with their bearer token, as over plaintext.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

from warmfleet.settings import Settings
from warmfleet.tls import check_pair, read_pem

CERT_SETTING, KEY_SETTING = "settings.tls_cert_path", "settings.tls_key_path"


@dataclass(frozen=True)
class ServerTls:
    """The gateway's certificate chain and key, as files (for ``ssl``) and as bytes (for gRPC)."""

    cert_path: str
    key_path: str
    certificate_chain: bytes
    private_key: bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        """The settings' pair, checked; None when they name none (the gateway serves plaintext)."""
        if not settings.tls_cert_path:
            return None
        chain = read_pem(settings.tls_cert_path, CERT_SETTING)
        key = read_pem(settings.tls_key_path, KEY_SETTING)
        check_pair(chain, key, CERT_SETTING, KEY_SETTING)
        return cls(settings.tls_cert_path, settings.tls_key_path, chain, key)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For ``add_secure_port``: the chain and key, no client certificate asked for."""
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)])

    def ssl_context(self) -> ssl.SSLContext:
        """For the HTTP side (aiohttp's ``TCPSite``): TLS 1.2 at least, no client certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def add_port(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Bind ``server`` at ``address`` (host:port, 0 picks a free port): over TLS when ``tls`` is given,
    else plaintext. Returns the bound port."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.grpc_credentials())
