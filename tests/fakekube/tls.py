"""Certificates for the fake API server's HTTPS: a cluster CA, the server's certificate
and a client certificate, made fresh for each test session (so none expires in the repo).

The server certificate names ``127.0.0.1`` and ``kubernetes.default.svc``, as a real API
server's names its service IP and DNS names; ``localhost`` is deliberately not in it,
so a test can connect by that name and see verification fail (or succeed only with
``tls-server-name``). ``other_ca`` signed nothing here: trusting it must fail.

Uses ``cryptography`` (installed with ``kubernetes`` through ``google-auth``).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "kubernetes.default.svc"
CLIENT_NAME = "gpuledger-dev"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA, the server's certificate and key, a client's, an unrelated CA."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    other_ca: str


def make_tls(directory: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool, sans=None, usage=None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(file: str, *objs) -> str:
        path = directory / file
        data = b""
        for obj in objs:
            if isinstance(obj, x509.Certificate):
                data += obj.public_bytes(serialization.Encoding.PEM)
            else:
                data += obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        path.write_bytes(data)
        return str(path)

    directory.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = cert("fake-cluster-ca", ca_key, "fake-cluster-ca", ca_key, ca=True)
    other = cert("some-other-ca", other_key, "some-other-ca", other_key, ca=True)
    server = cert("kube-apiserver", server_key, "fake-cluster-ca", ca_key, ca=False,
                  sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(SERVER_NAME)],
                  usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = cert(CLIENT_NAME, client_key, "fake-cluster-ca", ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        ca=write("ca.crt", ca), cert=write("server.crt", server), key=write("server.key", server_key),
        client_cert=write("client.crt", client), client_key=write("client.key", client_key),
        other_ca=write("other-ca.crt", other),
    )
