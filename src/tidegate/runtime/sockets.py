"""Binding and inheriting listening sockets; the TLS context."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import stat

from ..config import BindSettings, ConfigError, TLSSettings

__all__ = ["AddressInUse", "bind_socket", "describe", "ssl_context"]


class AddressInUse(ConfigError):
    """A listener's address is taken (another server, or one still shutting down): its own exit code."""

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def ssl_context(tls: TLSSettings, alpn: list[str]) -> ssl.SSLContext | None:
    """The server TLS context ``tls`` asks for (None without a certificate), offering ``alpn`` in that order."""
    problem = tls.problem()
    if problem is not None:
        raise ConfigError(problem)
    if tls.certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    for flag, path in (("--ssl-certfile", tls.certfile), ("--ssl-keyfile", tls.keyfile),
                       ("--ssl-ca-certs", tls.ca_certs)):
        if path is not None and not os.access(path, os.R_OK):
            reason = "no such file" if not os.path.exists(path) else "not readable by this user"
            raise ConfigError(f"{flag} {path}: {reason}")
    _expect_pem("--ssl-certfile", tls.certfile, b"CERTIFICATE-----", "certificate")
    if tls.keyfile is not None:
        _expect_pem("--ssl-keyfile", tls.keyfile, b"PRIVATE KEY-----", "private key")
    else:
        _expect_pem("--ssl-certfile", tls.certfile, b"PRIVATE KEY-----",
                    "private key (give it there or with --ssl-keyfile)")
    if tls.ca_certs is not None:
        _expect_pem("--ssl-ca-certs", tls.ca_certs, b"CERTIFICATE-----", "certificate")
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, tls.keyfile_password)
    except (OSError, ssl.SSLError) as exc:
        files = tls.certfile if tls.keyfile is None else f"{tls.certfile} with the key {tls.keyfile}"
        raise ConfigError(f"--ssl-certfile {files}: cannot load the certificate chain and its key: "
                          f"{_ssl_reason(exc)}") from None
    if tls.ca_certs is not None:
        try:
            context.load_verify_locations(tls.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ssl-ca-certs {tls.ca_certs}: cannot load CA certificates: "
                              f"{_ssl_reason(exc)}") from None
    if tls.ciphers is not None:
        try:
            context.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers {tls.ciphers!r}: no cipher OpenSSL knows matches") from None
    context.verify_mode = _CERT_REQS[tls.cert_reqs]
    context.set_alpn_protocols(alpn)
    # HTTP/2 over TLS (RFC 9113 §9.2): no renegotiation, no compression
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context


def _expect_pem(flag: str, path: str, marker: bytes, what: str) -> None:
    try:
        with open(path, "rb") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in text or marker not in text:
        raise ConfigError(f"{flag} {path}: no PEM {what} in it")


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's reason in words (``PEM_lib`` is no help): what is wrong with the file."""
    reason = getattr(exc, "reason", None)
    known = {"PEM_LIB": "not a PEM file, or the key does not match it", "NO_START_LINE": "not a PEM file",
             "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
             "BAD_DECRYPT": "the key is encrypted: a wrong or missing --ssl-keyfile-password",
             "EE_KEY_TOO_SMALL": "the key is too small for this OpenSSL's security level",
             "CA_MD_TOO_WEAK": "the certificate's signature is too weak for this OpenSSL's security level"}
    if reason in known:
        return f"{known[reason]} ({reason})"
    if reason == "NO_CERTIFICATE_OR_CRL_FOUND":
        return "no certificate in it"
    return str(getattr(exc, "strerror", None) or exc)


def bind_socket(bind: BindSettings) -> socket.socket:
    """The listening socket ``bind`` asks for: an inherited fd, a UNIX socket, or host:port."""
    if bind.fd is not None:
        sock = socket.socket(fileno=bind.fd)
        if sock.type != socket.SOCK_STREAM:
            raise ConfigError(f"fd {bind.fd} is not a stream socket")
        sock.setblocking(False)
        return sock
    if bind.uds is not None:
        path = bind.uds
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket left by a previous run
        return _listening(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path, bind.backlog,
                          f"UNIX socket {path!r}")
    host = bind.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return _listening(sock, (host.strip("[]"), bind.port), bind.backlog, f"{host}:{bind.port}")


def _listening(sock: socket.socket, address: str | tuple[str, int], backlog: int, name: str) -> socket.socket:
    """``sock`` bound to ``address`` and listening, non-blocking; closed, and a ConfigError, if it cannot bind."""
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        kind = AddressInUse if exc.errno == errno.EADDRINUSE else ConfigError
        raise kind(f"cannot bind {name}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket, scheme: str = "http") -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{name[0]}]:{name[1]}"
    return f"{scheme}://{name[0]}:{name[1]}"
