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


# ---------------------------------------------------------------- through a server: mTLS and the scope


async def tls_app(scope, receive, send):
    import json

    body = json.dumps({"http_version": scope["http_version"], "scheme": scope["scheme"],
                       "tls": scope["extensions"].get("tls")}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def pki(ca, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    server.private_key_pem.write_to_path(str(directory / "key.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ca.issue_cert("client.example", common_name="client one", organization_name="Example")
    return {"cert": str(directory / "cert.pem"), "key": str(directory / "key.pem"), "ca": str(directory / "ca.pem"),
            "client": client, "server": server}


def client_context(ca, cert=None):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def tls_server(run_server, pki, **settings):
    return run_server(tls_app, ssl_certfile=pki["cert"], ssl_keyfile=pki["key"], ssl_ca_certs=pki["ca"], **settings)


@pytest.mark.parametrize("http2", [False, True])
def test_mtls_required_and_the_scope(run_server, pki, ca, http2):
    import httpx

    server = tls_server(run_server, pki, ssl_cert_reqs="required")
    url = f"https://127.0.0.1:{server.port}/"
    with httpx.Client(verify=client_context(ca, pki["client"]), http2=http2, timeout=5) as client:
        data = client.get(url).json()
    assert data["http_version"] == ("2" if http2 else "1.1") and data["scheme"] == "https"
    tls = data["tls"]
    leaf = x509.load_pem_x509_certificate(pki["client"].cert_chain_pems[0].bytes())
    assert x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode()) == leaf
    assert tls["client_cert_name"] == leaf.subject.rfc4514_string()
    assert "CN=client one" in tls["client_cert_name"]
    assert x509.load_pem_x509_certificate(tls["server_cert"].encode()) == \
        x509.load_pem_x509_certificate(pki["server"].cert_chain_pems[0].bytes())
    assert tls["tls_version"] in (0x0303, 0x0304) and isinstance(tls["cipher_suite"], int)
    assert tls["client_cert_error"] is None
    # without a client certificate the handshake is refused
    with httpx.Client(verify=client_context(ca), http2=http2, timeout=5) as client, \
            pytest.raises(httpx.TransportError):
        client.get(url)


def test_mtls_optional(run_server, pki, ca):
    import httpx

    server = tls_server(run_server, pki, ssl_cert_reqs="optional")
    url = f"https://127.0.0.1:{server.port}/"
    tls = httpx.get(url, verify=client_context(ca), timeout=5).json()["tls"]
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    tls = httpx.get(url, verify=client_context(ca, pki["client"]), timeout=5).json()["tls"]
    assert len(tls["client_cert_chain"]) >= 1 and tls["client_cert_name"]
    # a certificate from another CA is refused
    other = trustme.CA().issue_cert("intruder")
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=client_context(ca, other), timeout=5)


def test_no_tls_extension_without_tls(run_server):
    import httpx

    server = run_server(tls_app)
    data = httpx.get(server.url + "/", timeout=5).json()
    assert data["tls"] is None and data["scheme"] == "http"


def test_tls_in_worker_processes(pki, ca):
    import httpx

    from .ops_helpers import Proc

    proc = Proc(["tests.ops_apps:app", "--port", "0", "--workers", "1", "--ssl-certfile", pki["cert"],
                 "--ssl-keyfile", pki["key"], "--ssl-ca-certs", pki["ca"], "--ssl-cert-reqs", "required"])
    try:
        url = proc.wait_for(r"listening on (https://\S+)").group(1)
        proc.wait_for(r"worker 1 \(pid \d+\) ready")
        response = httpx.get(url + "/", verify=client_context(ca, pki["client"]), timeout=10)
        assert response.json()["scheme"] == "https"
    finally:
        assert proc.stop() == 0


def test_a_tls_file_that_cannot_be_loaded_is_named_with_what_is_wrong(tmp_path, ca):
    from tidegate.config import ConfigError, TLSSettings
    from tidegate.runtime.sockets import ssl_context

    cert = ca.issue_cert("localhost")
    good_cert, good_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(good_cert))
    cert.private_key_pem.write_to_path(str(good_key))
    other_key = tmp_path / "other-key.pem"
    ca.issue_cert("other").private_key_pem.write_to_path(str(other_key))
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    cases = [
        (TLSSettings(certfile=str(tmp_path / "missing.pem")), "--ssl-certfile " + str(tmp_path / "missing.pem"),
         "no such file"),
        (TLSSettings(certfile=str(tmp_path / "garbage.pem")), "--ssl-certfile", "no PEM certificate in it"),
        (TLSSettings(certfile=str(good_cert)), "--ssl-certfile", "no PEM private key"),
        (TLSSettings(certfile=str(good_cert), keyfile=str(good_cert)), "--ssl-keyfile", "no PEM private key"),
        (TLSSettings(certfile=str(good_cert), keyfile=str(other_key)), "other-key.pem",
         "the key does not belong to the certificate"),
        (TLSSettings(certfile=str(good_cert), keyfile=str(good_key), ca_certs=str(tmp_path / "garbage.pem"),
                     cert_reqs="required"), "--ssl-ca-certs", "no PEM certificate in it"),
        (TLSSettings(certfile=str(good_cert), keyfile=str(good_key), ciphers="NO-SUCH-CIPHER"), "--ssl-ciphers",
         "no cipher"),
    ]
    for settings, named, reason in cases:
        with pytest.raises(ConfigError) as info:
            ssl_context(settings, ["http/1.1"])
        assert named in str(info.value) and reason in str(info.value), str(info.value)
    assert ssl_context(TLSSettings(certfile=str(good_cert), keyfile=str(good_key)), ["http/1.1"]) is not None
