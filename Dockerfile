# JointScan: gunicorn serving the committed models. No secret is baked in:
# SECRET_KEY (and optionally DATABASE_URL, REDIS_URL) come from the environment at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FLASK_APP=wsgi \
    JOINTSCAN_INSTANCE_PATH=/data \
    JOINTSCAN_ENV_NAME=production

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 jointscan

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=jointscan:jointscan . .
RUN mkdir -p /data /results && chown jointscan:jointscan /data /results
USER jointscan
VOLUME ["/data", "/results"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1

# The web node: migrate the database and settle runs that lost their job, then serve. The same image runs the
# Celery workers with `celery -A worker worker` (docker-compose.yml).
# gunicorn.conf.py: threaded workers, the worker time-out the app shares. In docker-compose.yml nginx faces
# the clients and this port is reachable from the internal network only.
CMD ["sh", "-c", "flask prepare && HOST=0.0.0.0 PORT=8000 exec gunicorn -c gunicorn.conf.py wsgi:app"]
