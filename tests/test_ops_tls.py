"""The ASGI tls extension: built from a real handshake between two SSLObjects over memory BIOs (no sockets)."""

from __future__ import annotations

import ssl

import pytest
import trustme
from cryptography import x509

from tidegate.runtime.tls import rfc4514, server_cert_pem, tls_extension


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLObject:
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server sees the client certificate once it has read the client's Finished
            server.write(b"x")
            c_in.write(s_out.read())
            return server
    raise AssertionError("no handshake")


def contexts(ca, tmp_path, *, client_cert=None, cert_reqs=ssl.CERT_REQUIRED, version=None):
    server_cert = ca.issue_cert("localhost")
    certfile = tmp_path / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(certfile))
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = cert_reqs
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    if version is not None:
        client_ctx.maximum_version = version
    if client_cert is not None:
        client_cert.configure_cert(client_ctx)
    return server_ctx, client_ctx, str(certfile), server_cert


def test_extension_with_a_client_certificate(ca, tmp_path):
    client_cert = ca.issue_cert("alice@example.org", common_name='Alice "A", Jr.+ <x>', organization_name="Org;1")
    server_ctx, client_ctx, certfile, server_cert = contexts(ca, tmp_path, client_cert=client_cert)
    ssl_object = handshake(server_ctx, client_ctx)
    ext = tls_extension(ssl_object, server_cert_pem(certfile))
    expected_server = server_cert.cert_chain_pems[0].bytes().decode()
    assert x509.load_pem_x509_certificate(ext["server_cert"].encode()) == \
        x509.load_pem_x509_certificate(expected_server.encode())
    chain = list(ext["client_cert_chain"])
    assert chain and x509.load_pem_x509_certificate(chain[0].encode()) == \
        x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes())
    leaf = x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes())
    assert ext["client_cert_name"] == leaf.subject.rfc4514_string()
    assert ext["client_cert_error"] is None
    assert ext["tls_version"] == 0x0304
    assert ext["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # the TLS 1.3 suites (RFC 8446 B.4)


def test_extension_without_a_client_certificate_over_tls_1_2(ca, tmp_path):
    server_ctx, client_ctx, certfile, _ = contexts(ca, tmp_path, cert_reqs=ssl.CERT_NONE,
                                                   version=ssl.TLSVersion.TLSv1_2)
    ext = tls_extension(handshake(server_ctx, client_ctx), server_cert_pem(certfile))
    assert ext["client_cert_chain"] == [] and ext["client_cert_name"] is None
    assert ext["tls_version"] == 0x0303
    name = handshake(server_ctx, client_ctx).cipher()[0]
    ids = {c["name"]: c["id"] & 0xFFFF for c in server_ctx.get_ciphers()}
    assert ext["cipher_suite"] == ids[name]
    assert (ext["cipher_suite"] >> 8) == 0xC0  # an ECDHE suite, 0xC0xx


def test_rfc4514_ordering_and_escaping():
    subject = ((("countryName", "FR"),), (("organizationName", "A+B"),),
               (("commonName", " lead"), ("emailAddress", "x@y")))
    assert rfc4514(subject) == "CN=\\ lead+1.2.840.113549.1.9.1=x@y,O=A\\+B,C=FR"
    assert rfc4514(((("commonName", "#hash"),),)) == "CN=\\#hash"


def test_server_cert_pem(tmp_path):
    assert server_cert_pem(None) is None
    assert server_cert_pem(str(tmp_path / "missing.pem")) is None
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert server_cert_pem(str(tmp_path / "junk.pem")) is None
