# JointScan: gunicorn serving the committed models. No secret is baked in:
# SECRET_KEY (and optionally DATABASE_URL) come from the environment at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FLASK_APP=wsgi \
    JOINTSCAN_INSTANCE_PATH=/data \
    JOINTSCAN_ENV_NAME=production

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 jointscan

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=jointscan:jointscan . .
RUN mkdir -p /data && chown jointscan:jointscan /data
USER jointscan
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1

# Migrate the database and sweep interrupted runs, then serve. X-Forwarded-* is the app's to trust
# (JOINTSCAN_PROXY_FIX_HOPS), never gunicorn's: its default trusts X-Forwarded-Proto from 127.0.0.1.
CMD ["sh", "-c", "flask prepare && exec gunicorn --bind 0.0.0.0:8000 --workers ${WORKERS:-2} --timeout 120 --forwarded-allow-ips= --access-logfile - wsgi:app"]
