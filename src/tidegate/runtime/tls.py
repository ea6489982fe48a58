"""The ASGI ``tls`` extension (asgiref ``tls.rst``, version 0.2) for connections over TLS.

Built once per connection, after the handshake: the server certificate, the client certificate chain and its
subject as an RFC 4514 string, the TLS version and the cipher suite as the integers the spec asks for.  Only TLS
connections get it, as the spec requires.

Python's ``ssl`` module refuses a client certificate that fails verification during the handshake, so
``client_cert_error`` is always ``None`` here.  Before Python 3.13 the ``ssl`` module gives only the client's own
certificate, so ``client_cert_chain`` then holds that one alone.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

__all__ = ["rfc4514", "server_cert_pem", "tls_extension", "with_tls"]

_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

# attribute names as ssl.getpeercert() reports them → RFC 4514 short names (or dotted OIDs, for the others)
_ATTRIBUTES = {
    "commonName": "CN", "localityName": "L", "stateOrProvinceName": "ST", "organizationName": "O",
    "organizationalUnitName": "OU", "countryName": "C", "streetAddress": "STREET", "domainComponent": "DC",
    "userId": "UID", "emailAddress": "1.2.840.113549.1.9.1", "serialNumber": "2.5.4.5", "surname": "2.5.4.4",
    "givenName": "2.5.4.42", "title": "2.5.4.12", "initials": "2.5.4.43", "generationQualifier": "2.5.4.44",
    "pseudonym": "2.5.4.65", "postalCode": "2.5.4.17", "businessCategory": "2.5.4.15",
    "jurisdictionCountryName": "1.3.6.1.4.1.311.60.2.1.3", "organizationIdentifier": "2.5.4.97",
}

_cipher_ids: dict[str, int] = {}


def _escape(value: str) -> str:
    out = []
    for i, char in enumerate(value):
        if char in '"+,;<>\\' or (char == "#" and i == 0) or (char == " " and i in (0, len(value) - 1)):
            out.append("\\" + char)
        elif char == "\0":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


def rfc4514(subject: Any) -> str:
    """A subject as ``ssl.getpeercert()`` gives it (RDNs of (name, value) pairs) → an RFC 4514 string."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_ATTRIBUTES.get(name, name)}={_escape(value)}" for name, value in rdn))
    return ",".join(rdns)


@functools.lru_cache(maxsize=8)
def server_cert_pem(certfile: str | None) -> str | None:
    """The first certificate of a PEM file, normalised; ``None`` if there is none."""
    if certfile is None:
        return None
    try:
        with open(certfile, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        return None
    block = text[begin:end + len("-----END CERTIFICATE-----")]
    try:
        return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(block))
    except ValueError:
        return None


def _cipher_suite(ssl_object: ssl.SSLObject, name: str) -> int | None:
    number = _cipher_ids.get(name)
    if number is None:
        # OpenSSL's cipher id is 0x0300XXXX for TLS, XXXX being the IANA number
        for cipher in ssl_object.context.get_ciphers():
            _cipher_ids[cipher["name"]] = cipher["id"] & 0xFFFF
        number = _cipher_ids.get(name)
    return number


def tls_extension(ssl_object: ssl.SSLObject, server_cert: str | None) -> dict[str, Any]:
    """The ``tls`` extension of one connection, once its handshake is done."""
    chain: list[str] = []
    name = None
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        verified = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13+
        certificates = verified() if verified is not None else [der]
        chain = [ssl.DER_cert_to_PEM_cert(bytes(cert)) for cert in certificates]
        peer = ssl_object.getpeercert()
        if peer:
            name = rfc4514(peer.get("subject", ()))
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": server_cert,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _VERSIONS.get(version) if version else None,
        "cipher_suite": _cipher_suite(ssl_object, cipher[0]) if cipher else None,
    }


def with_tls(extensions: dict[str, Any], transport: Any, certfile: str | None) -> dict[str, Any]:
    """A connection's scope ``extensions``: the server's, plus ``tls`` when the transport is a TLS one."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return extensions
    return {**extensions, "tls": tls_extension(ssl_object, server_cert_pem(certfile))}
