"""TLS without a network: the self-signed pair, the settings' rules, the gateway's pair check, what `up`
records, how the client picks TLS and its roots, and the errors a failed handshake becomes."""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
from datetime import datetime, timezone
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509

from gateway.tls import ServerTls
from tests.unit.test_cli_parsing import FakeRpcError
from warmfleet import client
from warmfleet.cli import commands
from warmfleet.client import GatewayUnreachableError, TlsError
from warmfleet.cluster_state import read_state, write_state
from warmfleet.errors import InvalidInput
from warmfleet.settings import Settings, load_settings
from warmfleet.tls import CertificatePair, check_pair, self_signed, write_pair


@pytest.fixture(scope="module")
def pair() -> CertificatePair:
    return self_signed(["gw.example", "127.0.0.1", "::1"])


@pytest.fixture
def files(tmp_path: Path, pair: CertificatePair) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    write_pair(pair, cert, key)
    return cert, key


# The self-signed pair


def test_a_self_signed_certificate_names_its_hosts_and_vouches_for_nothing_else(pair):
    cert = x509.load_pem_x509_certificate(pair.certificate_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gw.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("::1")]
    assert cert.issuer == cert.subject  # signed by its own key
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert 364 <= (cert.not_valid_after_utc - datetime.now(timezone.utc)).days <= 365
    check_pair(pair.certificate_pem, pair.private_key_pem, "cert", "key")  # the key is the certificate's


def test_the_key_is_written_0600_and_the_certificate_stays_readable(files):
    cert, key = files
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_a_key_that_is_not_the_certificates_is_refused_naming_the_key(pair):
    other = self_signed(["127.0.0.1"])
    with pytest.raises(InvalidInput, match="is not the key of the certificate") as caught:
        check_pair(pair.certificate_pem, other.private_key_pem, "settings.tls_cert_path",
                   "settings.tls_key_path")
    assert caught.value.field == "settings.tls_key_path"


def test_no_host_no_certificate():
    with pytest.raises(InvalidInput, match="at least one host"):
        self_signed([])


def test_the_cli_writes_a_pair_and_says_how_to_serve_it_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "pair"
    runner = CliRunner()
    first = runner.invoke(commands.cli, ["--home", str(tmp_path / "home"), "tls", "self-signed",
                                         "--out", str(out), "--host", "gw.example", "--days", "30"])
    assert first.exit_code == 0, first.output
    assert f"up --tls-cert {out / 'cert.pem'} --tls-key {out / 'key.pem'}" in first.output
    assert "gw.example, localhost, 127.0.0.1, ::1" in first.output
    assert oct((out / "key.pem").stat().st_mode & 0o777) == "0o600"
    written = (out / "cert.pem").read_bytes(), (out / "key.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(written[0])
    assert 29 <= (cert.not_valid_after_utc - datetime.now(timezone.utc)).days <= 30
    check_pair(*written, "cert", "key")
    again = runner.invoke(commands.cli, ["tls", "self-signed", "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output
    assert ((out / "cert.pem").read_bytes(), (out / "key.pem").read_bytes()) == written  # left as they were
    forced = runner.invoke(commands.cli, ["tls", "self-signed", "--out", str(out), "--force"])
    assert forced.exit_code == 0 and (out / "key.pem").read_bytes() != written[1]


# Settings


@pytest.mark.parametrize("given, missing", [("tls_cert_path", "tls_key_path"),
                                            ("tls_key_path", "tls_cert_path")])
def test_a_certificate_without_its_key_or_a_key_alone_is_refused_naming_the_other(files, given, missing):
    with pytest.raises(InvalidInput, match=f"is required with {given}") as caught:
        load_settings({given: str(files[0])}, environ={})
    assert caught.value.field == f"settings.{missing}"


@pytest.mark.parametrize("name", ["tls_cert_path", "tls_key_path", "tls_ca_path"])
def test_a_tls_file_that_cannot_be_read_is_refused_naming_the_setting(files, tmp_path, name):
    flags = {"tls_cert_path": str(files[0]), "tls_key_path": str(files[1]), name: str(tmp_path / "nope.pem")}
    with pytest.raises(InvalidInput, match="cannot read .*nope.pem: No such file") as caught:
        load_settings(flags, environ={})
    assert caught.value.field == f"settings.{name}"


def test_tls_files_from_the_environment_become_absolute_paths(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={"WARMFLEET_TLS_CERT_PATH": "tls/cert.pem",
                               "WARMFLEET_TLS_KEY_PATH": "tls/key.pem", "WARMFLEET_DATA_PLANE_TLS": "true"})
    assert (s.tls_cert_path, s.tls_key_path) == (str(files[0]), str(files[1]))
    assert s.tls_ca_path == "" and s.data_plane_tls is True
    assert load_settings(environ={}).tls_cert_path == ""  # neither: plaintext, as before


# The gateway's pair


def test_the_gateway_serves_plaintext_without_a_pair_and_tls_with_one(files):
    assert ServerTls.from_settings(Settings()) is None
    tls = ServerTls.from_settings(Settings(tls_cert_path=str(files[0]), tls_key_path=str(files[1])))
    assert isinstance(tls.grpc_credentials(), grpc.ServerCredentials)
    assert tls.ssl_context().minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_gateway_refuses_a_file_that_is_not_pem_or_a_key_not_the_certificates(files, tmp_path):
    cert, key = files
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(InvalidInput, match="not a PEM file") as caught:
        ServerTls.from_settings(Settings(tls_cert_path=str(garbage), tls_key_path=str(key)))
    assert caught.value.field == "settings.tls_cert_path"
    other = tmp_path / "other-key.pem"
    other.write_bytes(self_signed(["127.0.0.1"]).private_key_pem)
    with pytest.raises(InvalidInput, match="is not the key") as caught:
        ServerTls.from_settings(Settings(tls_cert_path=str(cert), tls_key_path=str(other)))
    assert caught.value.field == "settings.tls_key_path"


# What `up` records, and how the client reads it


def _tls_settings(home: Path, files, ca: str = "") -> Settings:
    return load_settings({"home": str(home), "tls_cert_path": str(files[0]), "tls_key_path": str(files[1]),
                          "tls_ca_path": ca or None}, environ={})


def test_up_records_tls_and_the_file_to_verify_with_and_plaintext_as_before(tmp_path, files):
    write_state(_tls_settings(tmp_path, files), 4242, 8123)
    state = read_state(Settings(home=tmp_path))
    assert state.tls and state.tls_ca_path == str(files[0])  # self-signed: the certificate itself
    assert state.metrics_url == "https://127.0.0.1:8123/metrics"
    assert isinstance(state.ssl_context(), ssl.SSLContext)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(files[0].read_bytes())
    write_state(_tls_settings(tmp_path, files, str(ca)), 4242, 8123)
    assert read_state(Settings(home=tmp_path)).tls_ca_path == str(ca)  # the CA, when one is named
    write_state(Settings(home=tmp_path), 4242, 8123)
    record = json.loads((tmp_path / "cluster.json").read_text())
    assert "tls" not in record and "tls_ca_path" not in record  # readable by a CLI that predates TLS
    plain = read_state(Settings(home=tmp_path))
    assert not plain.tls and plain.ssl_context() is None
    assert plain.metrics_url == "http://127.0.0.1:8123/metrics"


def test_the_client_reaches_the_recorded_gateway_as_it_serves(tmp_path, files, monkeypatch):
    monkeypatch.delenv("WARMFLEET_URL", raising=False)
    write_state(_tls_settings(tmp_path, files), 4242, 8123)
    settings = load_settings({"home": str(tmp_path)}, environ={})
    get = lambda: settings  # noqa: E731
    pem = files[0].read_bytes()
    assert client.resolve_endpoint(None, get) == client.Endpoint("127.0.0.1:4242", True, pem)
    # A URL to the same gateway verifies it the same way; another address, with the default roots.
    assert client.resolve_endpoint("grpcs://127.0.0.1:4242", get).root_certificates == files[0].read_bytes()
    assert client.resolve_endpoint("grpcs://gw.example:443", get) == client.Endpoint("gw.example:443", True)
    assert client.resolve_endpoint(None, get, tls=False) == client.Endpoint("127.0.0.1:4242")


def test_tls_by_url_flag_or_roots_and_plaintext_otherwise(tmp_path, files, monkeypatch):
    monkeypatch.delenv("WARMFLEET_URL", raising=False)
    pem = files[0].read_bytes()
    plain = load_settings({"home": str(tmp_path)}, environ={})
    with_ca = load_settings({"home": str(tmp_path), "tls_ca_path": str(files[0])}, environ={})
    assert client.resolve_endpoint(None, lambda: plain) == client.Endpoint("127.0.0.1:50051")
    assert client.resolve_endpoint("gw:1", lambda: plain) == client.Endpoint("gw:1")
    assert client.resolve_endpoint("grpcs://gw:1", lambda: with_ca) == client.Endpoint("gw:1", True, pem)
    assert client.resolve_endpoint("gw:1", lambda: plain, tls=True) == client.Endpoint("gw:1", True)
    given = client.resolve_endpoint("gw:1", lambda: plain, root_certificates=pem)
    assert given == client.Endpoint("gw:1", True, pem)
    by_path = client.resolve_endpoint("gw:1", lambda: plain, root_certificates=str(files[0]))
    assert by_path.root_certificates == pem and isinstance(by_path.credentials(), grpc.ChannelCredentials)
    assert client.Endpoint("gw:1").credentials() is None
    with pytest.raises(InvalidInput, match="root_certificates: cannot read"):
        client.resolve_endpoint("gw:1", lambda: plain, root_certificates=tmp_path / "none.pem")


# What a failed handshake becomes


@pytest.mark.parametrize("reason, says", [
    ("Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
     "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate",
     "is not one this client trusts"),
    ("Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.",
     "is not for the name connected to"),
    ("Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:"
     "OPENSSL_internal:WRONG_VERSION_NUMBER", "it does not serve TLS"),
], ids=["untrusted", "wrong-name", "not-tls"])
def test_a_failed_handshake_says_what_to_do(reason, says):
    details = f"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: {reason}"
    err = client.error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, details), "h:1", tls=True)
    assert isinstance(err, TlsError) and err.code == "UNAVAILABLE"
    assert str(err).startswith("the TLS handshake with the gateway at h:1 failed: ") and says in str(err)
    assert reason.split(":")[0] in str(err)  # the library's own words stay, for a search


def test_a_plaintext_client_hung_up_on_is_told_the_gateway_may_serve_tls():
    details = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
    err = client.error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, details), "h:1")
    assert type(err) is GatewayUnreachableError and "if it serves TLS, connect with TLS" in str(err)
    over_tls = client.error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, details), "h:1", tls=True)
    assert "serves TLS" not in str(over_tls) and "no gateway at h:1" in str(over_tls)


def test_a_certificate_from_the_environment_needs_its_key_too(monkeypatch):
    monkeypatch.setenv("WARMFLEET_TLS_CERT_PATH", os.devnull)
    with pytest.raises(InvalidInput, match="settings.tls_key_path"):
        load_settings()
