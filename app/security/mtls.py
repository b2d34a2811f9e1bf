"""System-to-system calls authenticated by a client certificate (mutual TLS, 等保三级: integrations
authenticate with certificates issued by the hospital CA).

Who verifies the certificate: the TLS handshake. uvicorn with ``ssl_ca_certs`` (HY_TLS_CA, see
app/security/tls.py) asks for a client certificate and refuses a handshake whose certificate the CA
did not sign; a client without one still connects (browsers) and uses a bearer token as before.

What uvicorn 0.54 does NOT do: hand the verified certificate to the application. Its ASGI scope has
no ``extensions["tls"]`` (the ASGI TLS extension). Two ways in, both read by ``peer_certificate``:

1. ``TlsHttpToolsProtocol`` below: uvicorn's httptools protocol plus the ASGI TLS extension, filled
   from the connection's SSL object (``getpeercert``: only a certificate that passed the handshake's
   verification is there). Pass it as uvicorn's ``http=`` when serving TLS with a client CA. It
   relies on uvicorn's protocol internals (``transport``, ``scope`` built in ``on_message_begin``):
   re-check it when upgrading uvicorn (tests/integration/test_transport_security.py runs a real
   handshake with the demo CA's client certificate).
2. A TLS-terminating proxy (nginx ``ssl_verify_client optional``, never ``optional_no_ca``) that
   forwards the verified certificate, URL-encoded PEM (nginx ``$ssl_client_escaped_cert``), in a
   header: trusted only when ``MtlsSettings.proxy_header`` is set AND the TCP peer is one of
   ``trusted_proxies``; the proxy must overwrite the header on every request (empty when no
   certificate). Anyone else sending that header is ignored.

The certificate's SHA-256 fingerprint (of its DER form) names an account in ``client_certificate``
(sql/0016_staff_security.sql); the account's roles are what the call may do. Rotating a certificate
is a new row; revoking one is ``active = false`` (CRLs / OCSP are not checked by the handshake here:
keep the fingerprint table the revocation list).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

import asyncpg
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.db import auth_security_repo
from app.security.actor import Actor

logger = logging.getLogger(__name__)

TERMINAL = "mtls"


class MtlsSettings(msgspec.Struct, frozen=True):
    proxy_header: str = ""  # e.g. "x-ssl-client-cert"; empty: no proxy is trusted
    trusted_proxies: frozenset[str] = frozenset()  # the proxies' addresses as the server sees them
    cache_s: float = 60.0  # how long a fingerprint -> account answer is reused


class PeerCertificate(msgspec.Struct, frozen=True):
    fingerprint_sha256: str  # lower-case hex of the DER form
    subject: str


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _subject(cert: dict[str, Any]) -> str:
    parts = []
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            parts.append(f"{name}={value}")
    return ",".join(parts)


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection (None without TLS)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        chain = [ssl.DER_cert_to_PEM_cert(der)]
        name = _subject(ssl_object.getpeercert() or {})
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that failed verification never gets this far
        "tls_version": None,
        "cipher_suite": None,
    }


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol adding ``scope["extensions"]["tls"]`` (computed once per connection)."""

    _tls_ext: dict[str, Any] | None
    _tls_done: bool = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._tls_done:
            self._tls_ext = tls_extension(self.transport.get_extra_info("ssl_object"))
            self._tls_done = True
        if self._tls_ext is not None:
            scope: MutableMapping[str, Any] = self.scope  # type: ignore[assignment]
            scope.setdefault("extensions", {})["tls"] = self._tls_ext


def _from_pem(pem: str, subject: str) -> PeerCertificate | None:
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except ValueError:
        return None
    return PeerCertificate(fingerprint(der), subject)


def _header(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def peer_certificate(scope: MutableMapping[str, Any], settings: MtlsSettings) -> PeerCertificate | None:
    """The verified client certificate of this request, if any (see the module docstring)."""
    tls = (scope.get("extensions") or {}).get("tls")
    if isinstance(tls, dict):
        chain = tls.get("client_cert_chain") or []
        if chain and not tls.get("client_cert_error"):
            return _from_pem(str(chain[0]), str(tls.get("client_cert_name") or ""))
    if settings.proxy_header:
        client = scope.get("client")
        peer = client[0] if client else ""
        if peer in settings.trusted_proxies:
            raw = _header(scope.get("headers") or [], settings.proxy_header)
            if raw:
                return _from_pem(unquote(raw), "")
    return None


class CertificateAuthenticator:
    """Maps a verified client certificate to the account of the system that holds it."""

    def __init__(
        self, pool: asyncpg.Pool, settings: MtlsSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.settings = settings or MtlsSettings()
        self.clock = clock
        self._cache: dict[str, tuple[float, Actor | None]] = {}

    async def resolve(self, scope: MutableMapping[str, Any], ip: str = "") -> Actor | None:
        """The system account behind the request's client certificate; None without a certificate
        or for one no active account is registered for (the caller then needs a bearer token)."""
        cert = peer_certificate(scope, self.settings)
        if cert is None:
            return None
        now = self.clock()
        hit = self._cache.get(cert.fingerprint_sha256)
        if hit is not None and now - hit[0] < self.settings.cache_s:
            actor = hit[1]
        else:
            row = await auth_security_repo.certificate_account(self.pool, cert.fingerprint_sha256)
            actor = None
            if row is not None:
                actor = Actor(
                    user_id=row["user_id"],
                    username=row["username"],
                    roles=frozenset(row["roles"]),
                    department_id=row["department_id"],
                    terminal=TERMINAL,
                )
            else:
                logger.warning("client certificate %s… is not registered", cert.fingerprint_sha256[:16])
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[cert.fingerprint_sha256] = (now, actor)
        return None if actor is None else msgspec.structs.replace(actor, ip=ip)
