"""Transport security (app/security/headers.py, tls.py, web_settings.py): the security headers on
every page, asset and API answer (errors included), no-store on personal data, CORS closed by
default, cookie-authenticated writes only from the platform's own origin, and TLS served by a real
uvicorn with the certificates scripts/make-demo-certs makes, verified against its demo CA."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.pages import _ASSETS, PAGES
from app.main import create_app
from app.security.headers import SecurityHeadersMiddleware
from app.security.tls import TlsConfigError, uvicorn_ssl_options
from app.security.web_settings import WebSecuritySettings, web_security_settings
from app.services import Services
from app.settings import PROJECT_ROOT
from tests.helpers import future_day, token_for
from tests.live_server import free_socket

MAKE_CERTS = PROJECT_ROOT / "scripts" / "make-demo-certs"
BASE = "http://hy.test"
EVIL = "https://evil.example"
HIS = "https://his.example:8443"


def secured_app(services: Services, web: WebSecuritySettings | None = None) -> Starlette:
    """The app as app/main.py builds it (create_app installs the security middleware), with `web`
    as its web-security settings."""
    settings = msgspec.structs.replace(services.settings, web=web or WebSecuritySettings())
    app = create_app(settings, "", "", background=False, services=services)
    app.state.services = services  # ASGITransport does not run the lifespan
    return app


@contextlib.asynccontextmanager
async def serve_secured(
    services: Services, web: WebSecuritySettings | None = None, **options: Any
) -> AsyncIterator[str]:
    """A real uvicorn serving the secured app (the pattern of tests/live_server.serve_app);
    `options` go to uvicorn.Config (the TLS ones). Yields the base URL."""
    web = web or WebSecuritySettings()
    app = secured_app(services, web)
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws_ping_interval=None, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if task.done():
        task.result()  # the server could not start: its error
    try:
        yield f"{'https' if web.tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        yield c


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(secured_app(services)) as c:
        yield c


def directives(csp: str) -> dict[str, str]:
    return {d.strip().split(" ", 1)[0]: d.strip().partition(" ")[2] for d in csp.split(";") if d.strip()}


def assert_secured(r: httpx.Response, *, api: bool) -> None:
    h = r.headers
    csp = directives(h["content-security-policy"])
    assert "'unsafe-eval'" not in h["content-security-policy"]
    if api:
        assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
        assert h["x-frame-options"] == "DENY"
    else:
        assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'", csp
        assert csp["connect-src"] == "'self'" and csp["img-src"] == "'self' data:" and csp["object-src"] == "'none'"
        assert csp["frame-ancestors"] == "'self'" and h["x-frame-options"] == "SAMEORIGIN"
        wall = r.request.url.path in ("/wall",)
        assert csp["style-src"] == ("'self' 'unsafe-inline'" if wall else "'self'"), (r.request.url, csp)
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert "camera=()" in h["permissions-policy"] and "microphone=()" in h["permissions-policy"]
    assert h["cross-origin-opener-policy"] == "same-origin"
    assert "strict-transport-security" not in h  # plain HTTP: HSTS only over TLS
    assert not [k for k in h if k.lower().startswith("access-control-")]


async def test_every_page_and_asset_carries_the_security_headers(client: httpx.AsyncClient) -> None:
    for path in PAGES:
        r = await client.get(path)
        assert r.status_code == 200, path
        assert_secured(r, api=False)
        assert "<script>" not in r.text and "<style>" not in r.text and " style=" not in r.text, path  # nothing inline
        assert " onclick=" not in r.text and "javascript:" not in r.text, path
    for name in _ASSETS:
        r = await client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert_secured(r, api=False)
    r = await client.get("/static/vendor/plotly.min.js")
    assert r.status_code == 200
    assert_secured(r, api=False)
    for path in ("/health", "/ping", "/openapi.json", "/static/nope.js", "/no-such-page"):
        assert_secured(await client.get(path), api=False)


async def test_api_answers_carry_the_headers_and_are_never_stored(
    client: httpx.AsyncClient, services: Services
) -> None:
    auth = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
    day = future_day(services)
    answers = [
        await client.get("/api/v1/auth/me", headers=auth),
        await client.get("/api/v1/departments", headers=auth),
        await client.get(f"/api/v1/availability?exam_code=CT-HEAD&day={day}", headers=auth),
        await client.get("/api/v1/auth/me"),  # 401 problem+json
        await client.post("/api/v1/auth/login", json={"username": "clerk", "password": "wrong"}),
        await client.get("/fhir/R4/metadata"),
        await client.get("/fhir/R4/Patient?identifier=1", headers=auth),
    ]
    assert [r.status_code for r in answers][:2] == [200, 200]
    assert answers[3].status_code == 401
    for r in answers:
        assert_secured(r, api=True)
        assert r.headers["cache-control"] == "no-store", r.request.url
        assert r.headers["pragma"] == "no-cache"


async def test_an_unexpected_error_still_carries_the_headers(services: Services) -> None:
    app = secured_app(services)

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    app.router.routes.append(Route("/api/v1/boom", boom))
    async with client_for(app) as c:
        r = await c.get("/api/v1/boom")
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/problem+json")
    assert_secured(r, api=True)
    assert r.headers["cache-control"] == "no-store"


async def test_cors_is_closed_by_default(client: httpx.AsyncClient, services: Services) -> None:
    preflight = {
        "origin": EVIL,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    for path in ("/api/v1/appointments", "/api/v1/auth/login", "/fhir/R4/Patient", "/"):
        r = await client.options(path, headers=preflight)
        assert r.status_code == 403, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "cors_refused"
        assert not [k for k in r.headers if k.startswith("access-control-")]
        assert r.headers["x-content-type-options"] == "nosniff"
    # A simple cross-origin request is answered (the browser withholds it): no CORS header at all.
    auth = {"authorization": f"Bearer {await token_for(services, 'clerk')}", "origin": EVIL}
    r = await client.get("/api/v1/departments", headers=auth)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_cors_opens_only_to_the_configured_origins(services: Services) -> None:
    web = web_security_settings({"HY_CORS_ORIGINS": f"{HIS}, https://emr.example/"})
    assert web.cors_origins == (HIS, "https://emr.example")
    async with client_for(secured_app(services, web)) as c:
        asked = {
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        }
        ok = await c.options("/api/v1/appointments", headers={"origin": HIS, **asked})
        assert ok.status_code == 204, ok.text
        assert ok.headers["access-control-allow-origin"] == HIS
        assert "POST" in ok.headers["access-control-allow-methods"]
        assert "authorization" in ok.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in ok.headers
        assert "Origin" in ok.headers["vary"]
        refused = await c.options("/api/v1/appointments", headers={"origin": EVIL, **asked})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        odd_header = {
            "origin": HIS,
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-evil",
        }
        assert (await c.options("/api/v1/appointments", headers=odd_header)).status_code == 403
        auth = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
        r = await c.get("/api/v1/departments", headers={**auth, "origin": HIS})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == HIS
        assert "access-control-allow-credentials" not in r.headers
        r = await c.get("/api/v1/departments", headers={**auth, "origin": EVIL})
        assert "access-control-allow-origin" not in r.headers and "Origin" in r.headers["vary"]


async def test_a_cookie_authenticated_write_must_come_from_the_platforms_own_origin(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await token_for(services, "clerk")
    cookie = {"cookie": f"hy_session={token}"}
    bearer = {"authorization": f"Bearer {token}"}
    foreign = [
        {"origin": EVIL},
        {"origin": "null"},
        {"origin": "http://hy.test:8080"},  # another port is another origin
        {"origin": "https://hy.test"},  # another scheme too
        {"referer": f"{EVIL}/page"},
        {"origin": BASE, "sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {},  # neither Origin nor Referer: no browser sends that
    ]
    for extra in foreign:
        r = await client.post("/api/v1/auth/logout", headers={**cookie, **extra})
        assert r.status_code == 403, (extra, r.text)
        assert r.json()["code"] == "csrf_refused"
        assert r.headers["x-content-type-options"] == "nosniff"
    assert (await client.get("/api/v1/auth/me", headers=bearer)).status_code == 200  # the session lives on
    # Reads are not writes; a bearer header is not a cookie a browser adds by itself.
    assert (await client.get("/api/v1/departments", headers={**cookie, "origin": EVIL})).json()
    r = await client.post("/api/v1/auth/logout", headers={**bearer, **cookie, "origin": EVIL})
    assert r.status_code == 200, r.text
    # Same origin (by Origin, by Referer, by Sec-Fetch-Site alone) passes the check.
    for extra in (
        {"origin": BASE},
        {"origin": "http://HY.test:80"},
        {"referer": f"{BASE}/desk?x=1"},
        {"origin": "null", "sec-fetch-site": "same-origin"},
    ):
        token = await token_for(services, "clerk")
        r = await client.post("/api/v1/auth/logout", headers={"cookie": f"hy_session={token}", **extra})
        assert r.status_code == 200, (extra, r.text)
        assert (await client.get("/api/v1/auth/me", headers={"authorization": f"Bearer {token}"})).status_code == 401


async def echo(request: Request) -> Response:
    response = JSONResponse({"method": request.method})
    response.set_cookie("hy_session", "t0ken")
    response.set_cookie("hy_pref", "a", samesite="lax", secure=True)
    response.headers["access-control-allow-origin"] = "*"  # a route's own CORS header never leaves
    return response


def echo_app(web: WebSecuritySettings) -> SecurityHeadersMiddleware:
    return SecurityHeadersMiddleware(Starlette(routes=[Route("/api/v1/echo", echo, methods=["GET", "POST"])]), web)


async def test_cookies_are_httponly_samesite_and_secure_over_tls() -> None:
    async with client_for(echo_app(WebSecuritySettings())) as c:
        r = await c.get("/api/v1/echo")
    cookies = r.headers.get_list("set-cookie")
    session = next(v for v in cookies if v.startswith("hy_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Secure" not in session  # plain HTTP
    assert "lax" not in session.lower()  # the session cookie is Strict whatever the route said
    pref = next(v for v in cookies if v.startswith("hy_pref="))
    assert "samesite=lax" in pref.lower() and "SameSite=Strict" not in pref and "HttpOnly" in pref
    assert "access-control-allow-origin" not in r.headers
    tls = WebSecuritySettings(tls_cert=Path("server.pem"), tls_key=Path("server.key"))
    async with client_for(echo_app(tls)) as c:
        r = await c.get("/api/v1/echo")
    assert all("; Secure" in v or "; secure" in v for v in r.headers.get_list("set-cookie"))


async def test_frame_ancestors_follow_the_settings(services: Services) -> None:
    web = web_security_settings({"HY_FRAME_ANCESTORS": f"self {HIS}"})
    assert web.frame_ancestors == ("'self'", HIS)
    async with client_for(secured_app(services, web)) as c:
        r = await c.get("/clinic?patient_id=1")
        assert directives(r.headers["content-security-policy"])["frame-ancestors"] == f"'self' {HIS}"
        assert "x-frame-options" not in r.headers  # it cannot name the HIS: CSP frame-ancestors decides
        api = await c.get("/api/v1/auth/me")
        assert directives(api.headers["content-security-policy"])["frame-ancestors"] == "'none'"
    web = web_security_settings({"HY_FRAME_ANCESTORS": "none"})
    async with client_for(secured_app(services, web)) as c:
        r = await c.get("/clinic")
        assert directives(r.headers["content-security-policy"])["frame-ancestors"] == "'none'"
        assert r.headers["x-frame-options"] == "DENY"


def test_the_web_settings_refuse_what_they_cannot_use(tmp_path: Path) -> None:
    defaults = web_security_settings({})
    assert defaults == WebSecuritySettings() and not defaults.tls and defaults.cors_origins == ()
    for bad in (
        {"HY_CORS_ORIGINS": "*"},
        {"HY_CORS_ORIGINS": "https://his.example/path"},
        {"HY_CORS_ORIGINS": "his.example"},
        {"HY_CORS_ORIGINS": "https://*.example"},
        {"HY_FRAME_ANCESTORS": "'self'; script-src *"},
        {"HY_FRAME_ANCESTORS": "none https://his.example"},
        {"HY_TLS_CERT": "server.pem"},  # no key
        {"HY_TLS_CA": "ca.pem"},  # mutual TLS without TLS
        {"HY_HSTS_MAX_AGE_S": "soon"},
    ):
        with pytest.raises(ValueError):
            web_security_settings(bad)
    missing = web_security_settings({"HY_TLS_CERT": str(tmp_path / "no.pem"), "HY_TLS_KEY": str(tmp_path / "no.key")})
    with pytest.raises(TlsConfigError, match="no such file"):
        uvicorn_ssl_options(missing)
    assert uvicorn_ssl_options(defaults) == {}


@pytest.fixture(scope="module")
def demo_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/make-demo-certs run into a temporary directory."""
    out = tmp_path_factory.mktemp("tls")
    subprocess.run([str(MAKE_CERTS), str(out)], check=True, capture_output=True, timeout=60)
    return out


def test_the_demo_certificates_chain_to_the_demo_ca(demo_certs: Path) -> None:
    for name in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"):
        assert (demo_certs / name).stat().st_size > 0
        if name.endswith(".key"):
            assert (demo_certs / name).stat().st_mode & 0o077 == 0  # private keys: owner only
    text = subprocess.run(
        ["openssl", "x509", "-in", str(demo_certs / "server.pem"), "-noout", "-ext", "subjectAltName,extendedKeyUsage"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text and "Server Authentication" in text
    # A mismatched key is refused before the server starts.
    mismatched = web_security_settings(
        {"HY_TLS_CERT": str(demo_certs / "server.pem"), "HY_TLS_KEY": str(demo_certs / "client.key")}
    )
    with pytest.raises(TlsConfigError, match="cannot be used together"):
        uvicorn_ssl_options(mismatched)
    # uvicorn's context from the options: the demo certificate, TLS 1.2 at least, client
    # certificates asked for (not required) with a client CA.
    web = web_security_settings(
        {
            "HY_TLS_CERT": str(demo_certs / "server.pem"),
            "HY_TLS_KEY": str(demo_certs / "server.key"),
            "HY_TLS_CA": str(demo_certs / "ca.pem"),
        }
    )
    config = uvicorn.Config(Starlette(), **uvicorn_ssl_options(web))
    config.load()
    assert config.ssl is not None and config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.ssl.verify_mode == ssl.CERT_OPTIONAL
    # Made again: the CA stays (clients keep trusting it), the server certificate is new.
    ca = (demo_certs / "ca.pem").read_bytes()
    server = (demo_certs / "server.pem").read_bytes()
    subprocess.run([str(MAKE_CERTS), str(demo_certs)], check=True, capture_output=True, timeout=60)
    assert (demo_certs / "ca.pem").read_bytes() == ca and (demo_certs / "server.pem").read_bytes() != server


async def test_tls_is_served_with_the_demo_certificates_and_hsts(services: Services, demo_certs: Path) -> None:
    web = web_security_settings(
        {
            "HY_TLS_CERT": str(demo_certs / "server.pem"),
            "HY_TLS_KEY": str(demo_certs / "server.key"),
            "HY_TLS_CA": str(demo_certs / "ca.pem"),
        }
    )
    trust = ssl.create_default_context(cafile=str(demo_certs / "ca.pem"))
    async with serve_secured(services, web, **uvicorn_ssl_options(web)) as base:
        assert base.startswith("https://")
        port = base.rsplit(":", 1)[1]
        async with httpx.AsyncClient(verify=trust) as c:
            for url in (base, f"https://localhost:{port}"):  # both names are in the certificate
                r = await c.get(url + "/")
                assert r.status_code == 200
                assert r.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
                assert "content-security-policy" in r.headers
                tls = r.extensions["network_stream"].get_extra_info("ssl_object")
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
            login = await c.post(base + "/api/v1/auth/login", json={"username": "clerk", "password": "Huiyue@2026"})
            assert login.status_code == 200 and login.headers["cache-control"] == "no-store"
            assert login.headers["strict-transport-security"].startswith("max-age=")
        # A client certificate from the demo CA is accepted (mutual TLS, for system-to-system calls).
        mutual = ssl.create_default_context(cafile=str(demo_certs / "ca.pem"))
        mutual.load_cert_chain(str(demo_certs / "client.pem"), str(demo_certs / "client.key"))
        async with httpx.AsyncClient(verify=mutual) as c:
            assert (await c.get(base + "/health")).status_code == 200
        # Without the demo CA the certificate is not trusted.
        async with httpx.AsyncClient() as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(base + "/")
        # A WebSocket over TLS (wss) with the demo CA.
        host = base.removeprefix("https://")
        async with websockets.connect(
            f"wss://{host}/ws/grid?department=US&day={future_day(services)}", ssl=trust
        ) as ws:
            await ws.send('{"type": "auth", "token": "nope"}')
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_a_cross_origin_websocket_with_the_session_cookie_is_refused(services: Services) -> None:
    token = await token_for(services, "clerk")
    day = future_day(services)
    async with serve_secured(services) as base:
        url = base.replace("http", "ws", 1) + f"/ws/grid?department=US&day={day}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, origin=EVIL, additional_headers={"cookie": f"hy_session={token}"})
        assert refused.value.response.status_code == 403
        # From the platform's own pages the handshake goes through.
        async with websockets.connect(url, origin=base, additional_headers={"cookie": f"hy_session={token}"}) as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "snapshot"


async def test_a_system_calls_with_its_client_certificate_and_acts_as_its_account(
    services: Services, demo_certs: Path
) -> None:
    """Mutual TLS through a real handshake: uvicorn verifies the certificate against the hospital
    CA, TlsHttpToolsProtocol hands it to the app, its fingerprint names an interface account."""
    from app.security.mtls import TlsHttpToolsProtocol, fingerprint

    pem = (demo_certs / "client.pem").read_text()
    user_id = await services.pool.fetchval(
        """INSERT INTO staff_user (hospital_id, username, display_name, password_hash)
           VALUES ('h1', 'ris-system', '放射信息系统', '!') RETURNING id"""
    )
    await services.pool.execute("INSERT INTO staff_role (user_id, role_code) VALUES ($1, 'interface')", user_id)
    await services.pool.execute(
        "INSERT INTO client_certificate (fingerprint_sha256, subject, user_id) VALUES ($1, 'CN=ris', $2)",
        fingerprint(ssl.PEM_cert_to_DER_cert(pem)),
        user_id,
    )
    web = web_security_settings(
        {
            "HY_TLS_CERT": str(demo_certs / "server.pem"),
            "HY_TLS_KEY": str(demo_certs / "server.key"),
            "HY_TLS_CA": str(demo_certs / "ca.pem"),
        }
    )
    mutual = ssl.create_default_context(cafile=str(demo_certs / "ca.pem"))
    mutual.load_cert_chain(str(demo_certs / "client.pem"), str(demo_certs / "client.key"))
    trust = ssl.create_default_context(cafile=str(demo_certs / "ca.pem"))
    async with serve_secured(services, web, http=TlsHttpToolsProtocol, **uvicorn_ssl_options(web)) as base:
        async with httpx.AsyncClient(verify=mutual) as c:
            me = await c.get(base + "/api/v1/auth/me")  # no token: the certificate is the credential
            assert me.status_code == 200, me.text
            assert me.json()["username"] == "ris-system" and me.json()["roles"] == ["interface"]
            # The account's roles are all it may do.
            assert (await c.get(base + "/api/v1/admin/live")).status_code == 403
        async with httpx.AsyncClient(verify=trust) as c:  # the same call without a certificate
            assert (await c.get(base + "/api/v1/auth/me")).status_code == 401
        await services.pool.execute("UPDATE client_certificate SET active = false WHERE user_id = $1", user_id)
        services.sessions.certificates._cache.clear()  # what the 60 s answer cache would do by itself
        async with httpx.AsyncClient(verify=mutual) as c:  # revoked: the row is the revocation list
            assert (await c.get(base + "/api/v1/auth/me")).status_code == 401
