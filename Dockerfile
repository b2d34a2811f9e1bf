# The app image: one image for every process — `serve` (the default command), `worker`, `hl7`,
# `dicom`, `migrate`, `generate-slots`, `reconcile` (Procfile, deploy/compose.yaml). Production runs
# it with DATABASE_URL and REDIS_URL pointing at real servers (the embedded servers are for laptops
# and demos). Not built in CI: no Docker engine there.
#
# No secrets in the image: the database and Redis passwords and the personal-data keys (HY_PII_*)
# come from the environment at run time. HY_ENV=production makes the app refuse to start without
# the PII keys and turns on TOTP and single sessions (docs/operations.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HY_ENV=production HY_HOST=0.0.0.0 HY_PORT=8000 HY_WORKERS=2 \
    HY_HL7_HOST=0.0.0.0 HY_DICOM_HOST=0.0.0.0 HY_DATA_DIR=/srv/huiyue/data

RUN useradd --create-home --uid 10001 huiyue
WORKDIR /srv/huiyue
COPY pyproject.toml README.md requirements.lock ./
COPY app ./app
COPY realtime ./realtime
COPY dashboards ./dashboards
COPY sql ./sql
# The locked versions (requirements.lock, also audited by .ci/security-checks) as constraints: only
# the runtime dependencies are installed, at the versions the tests ran with. The processes run
# from /srv/huiyue (the working directory), where the migrations (sql/) are found.
RUN pip install --constraint requirements.lock . \
    && mkdir -p "$HY_DATA_DIR" && chown huiyue:huiyue "$HY_DATA_DIR"

USER huiyue
# HTTP (or HTTPS with HY_TLS_CERT / HY_TLS_KEY), HL7 MLLP, DICOM.
EXPOSE 8000 2575 11112
# Ready = PostgreSQL and Redis answer (GET /ready, 503 otherwise). `serve` migrates, generates the
# horizon and rebuilds Redis before it listens: hence the start period. Other processes (worker,
# hl7, dicom) have no HTTP port: deploy/compose.yaml gives them their own checks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["python", "-c", "import os, ssl, urllib.request as r; tls = bool(os.environ.get('HY_TLS_CERT')); r.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('HY_PORT', '8000') + '/ready', timeout=4, context=ssl._create_unverified_context() if tls else None)"]
CMD ["python", "-m", "app", "serve", "--no-demo"]
