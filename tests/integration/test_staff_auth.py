"""Staff authentication (等保三级): lockout, idle timeout, the TOTP second factor, one live session per
account, password age / policy / history, patients' SMS login, client-certificate accounts.

Time is a controllable clock handed to the SessionManager: nobody sleeps 30 minutes."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.demo.data import DEMO_PASSWORD
from app.errors import NotAuthenticated
from app.main import create_app
from app.security import totp
from app.security.mtls import CertificateAuthenticator, MtlsSettings, fingerprint, peer_certificate, tls_extension
from app.security.passwords import policy_problems
from app.security.sessions import (
    MSG_IDLE,
    MSG_REPLACED,
    AccountLocked,
    PasswordChangeRequired,
    PasswordRejected,
    SecurityPolicy,
    SessionManager,
    TotpEnrolmentRequired,
    token_hash,
)
from app.services import Services
from tests.helpers import new_patients_with_orders, set_phone


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def manager(services: Services, clock: Clock, **policy: Any) -> SessionManager:
    s = services.settings.security
    return SessionManager(
        services.pool,
        services.redis,
        services.keys,
        s.session_ttl_s,
        s.session_cache_s,
        policy=SecurityPolicy(single_session=True, **policy),
        clock=clock,
    )


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def test_password_policy() -> None:
    assert policy_problems(DEMO_PASSWORD, "admin") == []
    assert policy_problems("Ab1!", "x")  # too short
    assert policy_problems("abcdefgh1", "x")  # two classes
    assert policy_problems("Admin@2026x", "admin")  # holds the user name
    assert policy_problems("Abcdefg1", "x") == []  # three classes


def test_totp_matches_rfc6238_vectors() -> None:
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # "12345678901234567890", RFC 6238 appendix B (SHA-1)
    assert totp.hotp(secret, totp.step_at(59), digits=8) == "94287082"
    assert totp.hotp(secret, totp.step_at(1111111109), digits=8) == "07081804"
    assert totp.hotp(secret, totp.step_at(2000000000), digits=8) == "69279037"
    code = totp.code_at(secret, 1_000_000)
    assert totp.verify(secret, code, 1_000_000) == totp.step_at(1_000_000)
    assert totp.verify(secret, code, 1_000_000 + 30) is not None  # one step of drift
    assert totp.verify(secret, code, 1_000_000 + 90) is None
    assert totp.verify(secret, code, 1_000_000, last_step=totp.step_at(1_000_000)) is None  # used once
    assert totp.provisioning_uri(secret, "admin").startswith("otpauth://totp/HuiYue:admin?secret=")


async def test_five_failures_lock_the_account_for_30_minutes(services: Services, clock: Clock) -> None:
    m = manager(services, clock)
    for _ in range(4):
        with pytest.raises(NotAuthenticated):
            await m.login("clerk", "wrong-password")
    with pytest.raises(AccountLocked):
        await m.login("clerk", "wrong-password")
    with pytest.raises(AccountLocked):
        await m.login("clerk", DEMO_PASSWORD)  # even the right password
    clock.advance(minutes=29)
    with pytest.raises(AccountLocked):
        await m.login("clerk", DEMO_PASSWORD)
    clock.advance(minutes=2)
    assert (await m.login("clerk", DEMO_PASSWORD)).token
    # Success resets the count: four more failures do not lock.
    for _ in range(4):
        with pytest.raises(NotAuthenticated):
            await m.login("clerk", "wrong-password")
    assert (await m.login("clerk", DEMO_PASSWORD)).token


async def test_lockout_answers_423_problem_json(services: Services, client: httpx.AsyncClient) -> None:
    for _ in range(4):
        r = await client.post("/api/v1/auth/login", json={"username": "doctor", "password": "nope"})
        problem(r, 401, "not_authenticated")
    body = problem(
        await client.post("/api/v1/auth/login", json={"username": "doctor", "password": "nope"}), 423, "account_locked"
    )
    assert "锁定" in body["title"] and body["locked_until"]
    problem(
        await client.post("/api/v1/auth/login", json={"username": "doctor", "password": DEMO_PASSWORD}),
        423,
        "account_locked",
    )


async def _answers(m: SessionManager, username: str, password: str, times: int) -> list[tuple[str, str]]:
    """What `times` logins get: the error's class and message, or "ok"."""
    seen = []
    for _ in range(times):
        try:
            await m.login(username, password)
            seen.append(("ok", ""))
        except (NotAuthenticated, AccountLocked) as exc:
            seen.append((type(exc).__name__, exc.message))
    return seen


async def test_a_name_without_an_account_locks_as_an_account_does(services: Services, clock: Clock) -> None:
    """Lockouts must not tell an attacker which names exist: a made-up name, and a real one,
    get the same answers, failure by failure, locked and unlocked at the same times."""
    m = manager(services, clock)
    real = await _answers(m, "clerk", "wrong-password", 6)
    made_up = await _answers(m, "no-such-user", "wrong-password", 6)
    assert real == made_up
    assert [kind for kind, _ in made_up] == ["NotAuthenticated"] * 4 + ["AccountLocked"] * 2
    assert "30分钟" in made_up[-1][1]
    assert await _answers(m, "No-Such-User ", DEMO_PASSWORD, 1) == [made_up[-1]]  # the same name, any case
    clock.advance(minutes=31)
    assert await _answers(m, "no-such-user", "wrong-password", 1) == [("NotAuthenticated", "用户名或密码错误")]
    assert await _answers(m, "clerk", "wrong-password", 1) == [("NotAuthenticated", "用户名或密码错误")]


async def test_a_made_up_name_is_locked_with_a_423_too(client: httpx.AsyncClient) -> None:
    for _ in range(4):
        r = await client.post("/api/v1/auth/login", json={"username": "nobody-here", "password": "nope"})
        problem(r, 401, "not_authenticated")
    body = problem(
        await client.post("/api/v1/auth/login", json={"username": "nobody-here", "password": "nope"}),
        423,
        "account_locked",
    )
    assert "锁定" in body["title"] and body["locked_until"]


async def test_idle_timeout_30_minutes_on_workstations_15_on_kiosks(services: Services, clock: Clock) -> None:
    m = manager(services, clock)
    token = (await m.login("clerk", DEMO_PASSWORD, terminal="desk-3")).token
    for _ in range(3):  # active: an hour and a half in all, never 30 minutes idle
        clock.advance(minutes=29)
        assert (await m.resolve(token)).username == "clerk"
    # The cache entry lost (Redis flushed): PostgreSQL's last activity still counts.
    await services.redis.delete(services.keys.session(token_hash(token)))
    clock.advance(minutes=29)
    assert (await m.resolve(token)).username == "clerk"
    clock.advance(minutes=31)
    with pytest.raises(NotAuthenticated) as exc:
        await m.resolve(token)
    assert exc.value.message == MSG_IDLE and exc.value.extra["reason"] == "idle_timeout"
    with pytest.raises(NotAuthenticated):  # and it stays ended
        await m.resolve(token)

    [(pid, _)] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    kiosk = await m.patient_session("h1", pid, "测试患者", "kiosk", "", 3600)
    clock.advance(minutes=14)
    assert (await m.resolve(kiosk.token)).patient_id == pid
    clock.advance(minutes=16)
    with pytest.raises(NotAuthenticated):
        await m.resolve(kiosk.token)


async def test_a_new_login_ends_the_previous_session(
    services: Services, clock: Clock, client: httpx.AsyncClient
) -> None:
    services.sessions = manager(services, clock)
    first = (await client.post("/api/v1/auth/login", json={"username": "nurse", "password": DEMO_PASSWORD})).json()
    assert (await client.get("/api/v1/auth/me", headers=bearer(first["token"]))).status_code == 200
    second = (await client.post("/api/v1/auth/login", json={"username": "nurse", "password": DEMO_PASSWORD})).json()
    body = problem(await client.get("/api/v1/auth/me", headers=bearer(first["token"])), 401, "not_authenticated")
    assert body["title"] == MSG_REPLACED and body["reason"] == "session_replaced"
    assert (await client.get("/api/v1/auth/me", headers=bearer(second["token"]))).status_code == 200
    # Another account's session is not touched.
    other = (await client.post("/api/v1/auth/login", json={"username": "doctor", "password": DEMO_PASSWORD})).json()
    assert (await client.get("/api/v1/auth/me", headers=bearer(second["token"]))).status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=bearer(other["token"]))).status_code == 200


async def test_totp_enrolment_then_login_in_two_steps(
    services: Services, clock: Clock, client: httpx.AsyncClient
) -> None:
    m = manager(services, clock)
    services.sessions = m
    token = (await client.post("/api/v1/auth/login", json={"username": "admin", "password": DEMO_PASSWORD})).json()[
        "token"
    ]
    enrol = (await client.post("/api/v1/auth/totp/enrol", headers=bearer(token))).json()
    secret = enrol["secret"]
    assert enrol["uri"].startswith("otpauth://totp/")
    problem(
        await client.post(
            "/api/v1/auth/totp/confirm",
            json={"code": "000000" if totp.code_at(secret, clock.now.timestamp()) != "000000" else "111111"},
            headers=bearer(token),
        ),
        422,
        "validation_failed",
    )
    r = await client.post(
        "/api/v1/auth/totp/confirm", json={"code": totp.code_at(secret, clock.now.timestamp())}, headers=bearer(token)
    )
    assert r.status_code == 200, r.text
    problem(await client.post("/api/v1/auth/totp/enrol", headers=bearer(token)), 409, "conflict")
    stored = await services.pool.fetchval("SELECT totp_secret FROM staff_user WHERE username = 'admin'")
    assert stored.startswith(totp.SEALED) and secret not in stored  # encrypted at rest
    assert totp.unseal(stored) == secret

    clock.advance(seconds=60)
    step1 = (await client.post("/api/v1/auth/login", json={"username": "admin", "password": DEMO_PASSWORD})).json()
    assert step1["totp_required"] is True and step1["token"] == "" and step1["pending_token"]
    pending = step1["pending_token"]
    # The pending token is no session.
    problem(await client.get("/api/v1/auth/me", headers=bearer(pending)), 401, "not_authenticated")
    # The password alone did not end the live session.
    assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200
    problem(
        await client.post(
            "/api/v1/auth/totp",
            json={
                "pending_token": pending,
                "code": "123456" if totp.code_at(secret, clock.now.timestamp()) != "123456" else "654321",
            },
        ),
        401,
        "not_authenticated",
    )
    code = totp.code_at(secret, clock.now.timestamp())
    step2 = await client.post("/api/v1/auth/totp", json={"pending_token": pending, "code": code})
    assert step2.status_code == 200, step2.text
    full = step2.json()["token"]
    assert (await client.get("/api/v1/auth/me", headers=bearer(full))).json()["username"] == "admin"
    problem(await client.get("/api/v1/auth/me", headers=bearer(token)), 401, "not_authenticated")  # replaced
    # The same code again (a replay) is refused, even on a fresh pending login.
    again = (await client.post("/api/v1/auth/login", json={"username": "admin", "password": DEMO_PASSWORD})).json()
    problem(
        await client.post("/api/v1/auth/totp", json={"pending_token": again["pending_token"], "code": code}),
        401,
        "not_authenticated",
    )
    # Wrong codes count towards the lockout.
    for _ in range(3):
        await client.post("/api/v1/auth/totp", json={"pending_token": again["pending_token"], "code": "999999"})
    body = (
        await client.post("/api/v1/auth/totp", json={"pending_token": again["pending_token"], "code": "999999"})
    ).json()
    assert body["code"] == "account_locked", body


async def test_required_totp_restricts_unenrolled_accounts_of_its_roles(services: Services, clock: Clock) -> None:
    m = manager(services, clock, require_totp=True)
    result = await m.login("deptadmin", DEMO_PASSWORD)
    assert result.totp_enrolment_required and not result.totp_required
    with pytest.raises(TotpEnrolmentRequired):
        await m.resolve(result.token)
    assert (await m.resolve(result.token, allow_restricted=True)).username == "deptadmin"
    enrolment = await m.enrol_totp(result.actor)
    await m.confirm_totp(result.actor, result.token, totp.code_at(enrolment.secret, clock.now.timestamp()))
    assert (await m.resolve(result.token)).username == "deptadmin"  # restriction lifted
    # A role without the requirement logs in with the password alone.
    doctor = await m.login("doctor", DEMO_PASSWORD)
    assert not doctor.totp_enrolment_required and (await m.resolve(doctor.token)).username == "doctor"
    assert SecurityPolicy.for_environment("production").require_totp
    assert not SecurityPolicy.for_environment("development").require_totp


async def test_expired_password_allows_only_the_change_then_history_applies(
    services: Services, clock: Clock, client: httpx.AsyncClient
) -> None:
    m = manager(services, clock)
    services.sessions = m
    clock.advance(days=91)
    login = (await client.post("/api/v1/auth/login", json={"username": "tech", "password": DEMO_PASSWORD})).json()
    assert login["password_expired"] is True
    h = bearer(login["token"])
    body = problem(await client.get("/api/v1/exam-types", headers=h), 403, "password_expired")
    assert "修改密码" in body["title"]
    assert (await client.get("/api/v1/auth/me", headers=h)).status_code == 200
    with pytest.raises(PasswordChangeRequired):
        await m.resolve(login["token"])

    def change(current: str, new: str) -> Any:
        return client.post("/api/v1/auth/password", json={"current_password": current, "new_password": new}, headers=h)

    problem(await change("wrong", "Better@2027"), 403, "wrong_password")
    problem(await change(DEMO_PASSWORD, "short"), 422, "password_policy")
    problem(await change(DEMO_PASSWORD, DEMO_PASSWORD), 422, "password_policy")
    r = await change(DEMO_PASSWORD, "Better@2027")
    assert r.status_code == 200 and r.json()["relogin"] is True
    problem(await client.get("/api/v1/auth/me", headers=h), 401, "not_authenticated")  # every session ended

    current = "Better@2027"

    async def change_to(new: str) -> None:
        nonlocal current
        actor = await m.resolve((await m.login("tech", current)).token)
        await m.change_password(actor, current, new)
        current = new

    for n in range(3):
        await change_to(f"Next@{n}abc")
    # The last five: Next@2abc (current), Next@1abc, Next@0abc, Better@2027 and the demo password.
    actor = await m.resolve((await m.login("tech", current)).token)
    for old in (DEMO_PASSWORD, "Better@2027", "Next@0abc", current):
        with pytest.raises(PasswordRejected):
            await m.change_password(actor, current, old)
    await change_to("Next@3abc")
    # Now the demo password is the sixth back: allowed again.
    actor = await m.resolve((await m.login("tech", current)).token)
    await m.change_password(actor, current, DEMO_PASSWORD)
    current = DEMO_PASSWORD
    actor = await m.resolve((await m.login("tech", current)).token)
    await m.change_password(actor, current, "Fresh@2028")
    assert (await m.login("tech", "Fresh@2028")).password_expired is False


async def test_patients_log_in_with_an_sms_code(services: Services, clock: Clock, client: httpx.AsyncClient) -> None:
    services.sessions = manager(services, clock)
    [(pid, _)] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    phone = "13912345678"
    await set_phone(services.pool, pid, phone)
    r = await client.post("/api/v1/self/sms-code", json={"phone": phone})
    assert r.status_code == 202 and "139****5678" in r.json()["message"], r.text
    # An unknown number gets the same answer (nothing sent).
    unknown = await client.post("/api/v1/self/sms-code", json={"phone": "13800000000"})
    assert unknown.status_code == 202 and unknown.json()["status"] == "sent"
    row = await services.pool.fetchrow(
        "SELECT aggregate_id, payload FROM outbox WHERE topic = 'patient.notice' AND payload->>'kind' = 'login_code'"
    )
    assert row["aggregate_id"] == str(pid)
    payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
    code = "".join(ch for ch in payload["message"].split("验证码为")[1][:6])
    assert code.isdigit() and payload["expires_at"] and payload["dedupe"].startswith("login_code:")
    assert await services.pool.fetchval("SELECT count(*) FROM sms_login_code WHERE code_hash = $1", code) == 0

    wrong = "000000" if code != "000000" else "111111"
    problem(await client.post("/api/v1/self/sms-login", json={"phone": phone, "code": wrong}), 401, "not_authenticated")
    ok = await client.post("/api/v1/self/sms-login", json={"phone": phone, "code": code})
    assert ok.status_code == 200, ok.text
    assert ok.json()["patient_id"] == pid
    me = (await client.get("/api/v1/auth/me", headers=bearer(ok.json()["token"]))).json()
    assert me["patient_id"] == pid and me["roles"] == ["patient"]
    # A code is used once.
    problem(await client.post("/api/v1/self/sms-login", json={"phone": phone, "code": code}), 401, "not_authenticated")


async def test_sms_code_dies_after_five_wrong_tries(services: Services, clock: Clock) -> None:
    m = manager(services, clock)
    [(pid, _)] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    await set_phone(services.pool, pid, "13700001111")
    assert await m.issue_sms_code("h1", "13700001111")
    payload = await services.pool.fetchval("SELECT payload->>'message' FROM outbox WHERE aggregate_id = $1", str(pid))
    code = payload.split("验证码为")[1][:6]
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        with pytest.raises(NotAuthenticated):
            await m.sms_login("h1", "13700001111", wrong, "h5", "", 900)
    with pytest.raises(NotAuthenticated):
        await m.sms_login("h1", "13700001111", code, "h5", "", 900)
    clock.advance(seconds=61)  # a new code after the resend interval works
    assert await m.issue_sms_code("h1", "13700001111")


def _certificate() -> tuple[bytes, str]:
    """A self-signed client certificate (DER) and its subject, made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "his.hospital.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER), "commonName=his.hospital.test"


async def test_a_registered_client_certificate_authenticates_a_system_account(services: Services) -> None:
    from app.db import auth_security_repo

    der, subject = _certificate()
    pem = ssl.DER_cert_to_PEM_cert(der)
    user_id = await services.pool.fetchval("SELECT id FROM staff_user WHERE username = 'clerk'")
    auth = CertificateAuthenticator(services.pool)
    scope: dict[str, Any] = {
        "type": "http",
        "extensions": {"tls": {"client_cert_chain": [pem], "client_cert_name": subject}},
    }
    assert await auth.resolve(scope) is None  # not registered
    await auth_security_repo.register_certificate(services.pool, fingerprint(der), subject, user_id)
    actor = await CertificateAuthenticator(services.pool).resolve(scope, "10.0.0.5")
    assert actor is not None and actor.username == "clerk" and actor.terminal == "mtls" and actor.ip == "10.0.0.5"
    # No certificate: no account.
    assert await auth.resolve({"type": "http"}) is None

    # Through a TLS-terminating proxy: only from a trusted address, only when configured.
    from urllib.parse import quote

    header = [(b"x-ssl-client-cert", quote(pem).encode())]
    proxied = MtlsSettings(proxy_header="X-SSL-Client-Cert", trusted_proxies=frozenset({"10.0.0.1"}))
    assert peer_certificate({"client": ("10.0.0.1", 1), "headers": header}, proxied) is not None
    assert peer_certificate({"client": ("10.9.9.9", 1), "headers": header}, proxied) is None
    assert peer_certificate({"client": ("10.0.0.1", 1), "headers": header}, MtlsSettings()) is None

    # The uvicorn protocol's extension from an SSL object with a peer certificate.
    class FakeSsl:
        def getpeercert(self, binary_form: bool = False) -> Any:
            return der if binary_form else {"subject": ((("commonName", "his.hospital.test"),),)}

    ext = tls_extension(FakeSsl())  # type: ignore[arg-type]
    assert ext is not None and ext["client_cert_name"] == subject
    assert peer_certificate({"extensions": {"tls": ext}}, MtlsSettings()).fingerprint_sha256 == fingerprint(der)  # type: ignore[union-attr]
