"""TLS served by the platform itself: uvicorn's options from the web settings, checked before the
server starts so a wrong path or a key that does not match its certificate fails at once with a
clear message (not on the first browser's handshake).

Certificates for a demo or a laptop come from scripts/make-demo-certs (a local CA, a server
certificate for localhost / 127.0.0.1 and a client certificate for system-to-system calls, in
.data/tls/). In a hospital they come from the hospital's CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.security.web_settings import WebSecuritySettings

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are not affected by this list);
# uvicorn's own default ("TLSv1") also lets CBC and SHA-1 suites in.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!DSS:!SHA1"


class TlsConfigError(ValueError):
    """The TLS files named in the settings cannot be used."""


def _readable(name: str, path: Path) -> str:
    if not path.is_file():
        raise TlsConfigError(f"{name}={path}: no such file (scripts/make-demo-certs makes demo ones)")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsConfigError(f"{name}={path}: cannot be read ({exc.strerror})") from None
    return str(path)


def server_context(web: WebSecuritySettings) -> ssl.SSLContext:
    """The server-side context the settings describe (what uvicorn will build), loaded to check it:
    TLS 1.2 at least; client certificates asked for (not required) when a client CA is set."""
    if web.tls_cert is None or web.tls_key is None:
        raise TlsConfigError("TLS is not configured (HY_TLS_CERT and HY_TLS_KEY)")
    cert = _readable("HY_TLS_CERT", web.tls_cert)
    key = _readable("HY_TLS_KEY", web.tls_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"HY_TLS_CERT / HY_TLS_KEY cannot be used together: {exc}") from None
    if web.tls_ca is not None:
        ca = _readable("HY_TLS_CA", web.tls_ca)
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"HY_TLS_CA={ca}: not a PEM CA certificate: {exc}") from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def harden(config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's ssl_context_factory: its own context, with TLS 1.0 and 1.1 refused."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def uvicorn_ssl_options(web: WebSecuritySettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config / uvicorn.run: none for plain HTTP. The files are
    checked first (TlsConfigError). With a client CA the server asks for a client certificate but
    does not require one (browsers have none): the routes for system-to-system calls decide."""
    if not web.tls:
        return {}
    server_context(web)
    assert web.tls_cert is not None and web.tls_key is not None
    options: dict[str, Any] = {
        "ssl_certfile": str(web.tls_cert),
        "ssl_keyfile": str(web.tls_key),
        "ssl_ciphers": CIPHERS,
        "ssl_context_factory": harden,
    }
    if web.tls_ca is not None:
        options["ssl_ca_certs"] = str(web.tls_ca)
        options["ssl_cert_reqs"] = ssl.CERT_OPTIONAL
    return options


def scheme(web: WebSecuritySettings) -> str:
    return "https" if web.tls else "http"
