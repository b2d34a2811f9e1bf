# The app image: production runs it with DATABASE_URL and REDIS_URL pointing at real servers
# (the embedded servers are for laptops and demos). Not built in CI: no Docker engine there.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HY_HOST=0.0.0.0 HY_PORT=8000 HY_WORKERS=2

RUN useradd --create-home --uid 10001 huiyue
WORKDIR /srv/huiyue
COPY pyproject.toml README.md ./
COPY app ./app
COPY realtime ./realtime
COPY dashboards ./dashboards
COPY sql ./sql
RUN pip install .

USER huiyue
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)" || exit 1
# `serve` applies pending migrations and rebuilds the Redis index before it listens.
CMD ["python", "-m", "app", "serve", "--no-demo"]
