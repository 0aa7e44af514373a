"""The operator's door (issue 14): its own listener, loopback by default; elsewhere only with
TLS and a bearer token or client certificates.  Served for real on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloudvac.config.secrets import SecretError
from cloudvac.config.settings import Settings
from cloudvac.web.listen import WebConfigError
from cloudvac.web.operator import operator_access
from tests.integration.webserver import web_server

TOKEN = "operator-canary-7f3e9d2c41b8a6e5"


def _key_and_cert(name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None,
                  ca: bool = False) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer, issuer_name = issuer if issuer is not None else (key, subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if name == "127.0.0.1":
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(name))]), critical=False)
    return key, builder.sign(signer, hashes.SHA256())


def _write(path: Path, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> Path:
    data = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_off_loopback_the_door_needs_tls_and_a_credential(tmp_path: Path) -> None:
    token = tmp_path / "operator.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    wide = {"state_dir": tmp_path, "operator_listen": "0.0.0.0:9443"}
    with pytest.raises(WebConfigError, match="operator_tls_cert"):
        operator_access(Settings(**wide, operator_token_file=token))
    ca_key, ca = _key_and_cert("cloudvac test CA", None, ca=True)
    key, cert = _key_and_cert("127.0.0.1", (ca_key, ca.subject))
    pem = _write(tmp_path / "door.pem", key, cert)
    with pytest.raises(WebConfigError, match="operator_token_file or operator_tls_client_ca"):
        operator_access(Settings(**wide, operator_tls_cert=pem, operator_tls_key=pem))
    access = operator_access(Settings(**wide, operator_tls_cert=pem, operator_tls_key=pem,
                                      operator_token_file=token))
    assert access.token == TOKEN.encode()
    token.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600") as refused:
        operator_access(Settings(**wide, operator_tls_cert=pem, operator_tls_key=pem,
                                 operator_token_file=token))
    assert TOKEN not in str(refused.value)


def test_a_configured_token_is_required_on_every_operator_request(tmp_path: Path) -> None:
    token = tmp_path / "operator.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with web_server(tmp_path / "state", operator_token_file=token) as web:
        for path in ("/status", "/metrics", "/healthz", "/openapi.json"):
            url = web.operator_url + path
            assert httpx.get(url, timeout=30).status_code == 401, path
            wrong = {"Authorization": f"Bearer {TOKEN}x"}
            assert httpx.get(url, headers=wrong, timeout=30).status_code == 401, path
            right = {"Authorization": f"Bearer {TOKEN}"}
            assert httpx.get(url, headers=right, timeout=30).status_code == 200, path


def test_client_certificates_signed_by_the_configured_ca_are_required(tmp_path: Path) -> None:
    ca_key, ca = _key_and_cert("cloudvac test CA", None, ca=True)
    server_key, server_cert = _key_and_cert("127.0.0.1", (ca_key, ca.subject))
    client_key, client_cert = _key_and_cert("operator", (ca_key, ca.subject))
    stranger_ca_key, stranger_ca = _key_and_cert("another CA", None, ca=True)
    stranger_key, stranger_cert = _key_and_cert("stranger", (stranger_ca_key,
                                                             stranger_ca.subject))
    door = _write(tmp_path / "door.pem", server_key, server_cert)
    bundle = _write(tmp_path / "ca.pem", None, ca)
    mine = _write(tmp_path / "client.pem", client_key, client_cert)
    theirs = _write(tmp_path / "stranger.pem", stranger_key, stranger_cert)
    with web_server(tmp_path / "state", operator_tls_cert=door, operator_tls_key=door,
                    operator_tls_client_ca=bundle) as web:
        assert web.operator_url.startswith("https://")

        def status(client_pem: Path | None) -> int:
            context = ssl.create_default_context(cafile=str(bundle))
            if client_pem is not None:
                context.load_cert_chain(client_pem)
            return httpx.get(web.operator_url + "/status", verify=context,
                             timeout=30).status_code

        assert status(mine) == 200
        for refused in (None, theirs):
            with pytest.raises((httpx.ConnectError, httpx.ReadError,
                                httpx.RemoteProtocolError)):
                status(refused)
