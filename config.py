"""Configuration: defaults, environment overrides, and the SECRET_KEY rules."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from flask import Flask

from model_loader import DEFAULT_MODELS_DIR
from private_files import write_private

DEV_SECRET_FILE = "secret_key"
MIN_SECRET_KEY_LENGTH = 32
# Values seen in tutorials, examples and our own tests: never acceptable in production.
WEAK_SECRET_KEYS = frozenset({
    "secret", "secret-key", "secret_key", "secretkey", "mysecret", "my-secret-key", "your-secret-key",
    "yoursecretkey", "changeme", "change-me", "change_me", "changethis", "change-this", "please-change-me",
    "dev", "development", "dev-secret", "dev-key", "devkey", "default", "test", "testing", "test-secret-key",
    "jointscan", "jointscan-secret", "flask", "flask-secret", "password", "12345678", "insecure",
    "not-secret", "notsecret", "supersecret", "super-secret", "s3cr3t", "xxx", "none", "null",
})


class Config:
    """Defaults; every value can be overridden by an environment variable of the same name prefixed JOINTSCAN_."""

    MAX_UPLOAD_BYTES = 64 * 2**20           # file size limit for one scan
    MAX_IMAGE_PIXELS = 40_000_000           # pixel-count limit, checked before decoding
    MODELS_DIR = str(DEFAULT_MODELS_DIR)
    RUNS_PER_PAGE = 20
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False           # set JOINTSCAN_SESSION_COOKIE_SECURE=1 behind HTTPS
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    WTF_CSRF_TIME_LIMIT = None              # token lives as long as the session
    SESSION_IDLE_MINUTES = 30               # a session ends after this long without a request...
    SESSION_MAX_HOURS = 12                  # ...and this long after the login, whatever happens
    ENV_NAME = "development"
    SIGNUP_OPEN = True                      # default until an admin changes it on the admin page
    PROXY_FIX_HOPS = 0                      # >0: trust X-Forwarded-For/-Proto/-Host from that many proxies
    # Login throttling (Flask-Limiter syntax); only failed attempts count.
    LOGIN_LIMITS_PER_ACCOUNT = "5 per minute;20 per hour"
    LOGIN_LIMITS_PER_ADDRESS = "20 per minute;100 per hour"
    SIGNUP_LIMITS_PER_ADDRESS = "10 per hour"
    # Empty: REDIS_URL when it is set (the counts shared by every web node), else a SQLite file in the instance
    # folder, shared by the workers of this instance (web/ratelimit_sqlite.py).
    RATELIMIT_STORAGE_URI = ""
    # Analyses (pages and API together), per user and per client address; 429 with Retry-After above.
    ANALYSIS_LIMITS_PER_USER = "20 per minute;600 per day"
    ANALYSIS_LIMITS_PER_ADDRESS = "40 per minute;2000 per day"
    STORAGE_QUOTA_BYTES = 5 * 2**30         # stored results per user unless an admin sets another quota
    MIN_FREE_DISK_BYTES = 512 * 2**20       # below this free space, analyses are refused before anything is written
    # A request body must arrive at this average rate (bytes/s) after a grace period; else 408
    # (web/slow_clients.py). 20 kB/s: a 64 MB scan in under an hour.
    BODY_MIN_RATE = 20_000
    BODY_GRACE_S = 10
    # gunicorn restarts a worker whose main loop is stuck this long (gunicorn.conf.py reads the same setting).
    WORKER_TIMEOUT_S = 120
    # Analyses are jobs (jobs.py). REDIS_URL set: Celery workers run them (Redis as broker and result backend,
    # and the login throttling counts); empty: JOB_THREADS threads of each web process do.
    REDIS_URL = ""
    JOB_THREADS = 2                 # in-process: analyses one web process runs at once (each uses every core)
    JOB_TIME_LIMIT_S = 120          # one analysis; past it the run fails with that reason
    JOB_HEARTBEAT_S = 5             # a job's holder says it is alive this often...
    JOB_STALE_AFTER_S = 30          # ...and is taken for dead after this long without: its runs go to a new job
    JOB_MAX_ATTEMPTS = 3            # a run whose job dies this often fails (a scan that kills its worker)
    JOB_QUEUE_TIMEOUT_S = 6 * 3600  # a run waiting this long in the broker's queue fails (workers are down)
    SWEEP_EVERY_S = 30              # how often a web process looks for runs that lost their job (web/upkeep.py)
    # The upload page waits this long for a quick result before it shows the run's progress page; the API's
    # ?wait=true waits up to API_WAIT_S for the run to end (else 202, as without it).
    UPLOAD_WAIT_S = 0
    API_WAIT_S = 120
    # Timelines flag a change larger than a measure's smallest detectable change (web/timeline.py): the knee's
    # continuous KL grade in grades, the hand's GUSS in points. A clinic that measured its own sets them here.
    # A DICOMweb server (a PACS) to search, retrieve studies from and store results in (web/pacs.py); empty:
    # the "From PACS" page says that none is configured.
    DICOMWEB_URL = ""
    DICOMWEB_USER = ""
    DICOMWEB_PASSWORD = ""
    KNEE_KL_SDC = 0.5
    HAND_SDC = 20.0
    # Smallest detectable change of the sacroiliac oedema volume in mL (the timeline flags larger changes): about
    # the readers' own spread on the study they agreed on best among the small ones (case 1007: 2.8-3.9 mL over
    # four sessions; benchmarks/sacroiliac_oedema.py prints it). Smaller changes are within what readers disagree on.
    SIJ_BME_SDC_ML = 1.0


# How a yes/no value is written in the environment or a request.
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def load_environment(app: Flask) -> None:
    for key in ("MAX_UPLOAD_BYTES", "MAX_IMAGE_PIXELS", "RUNS_PER_PAGE", "PROXY_FIX_HOPS", "SESSION_IDLE_MINUTES",
                "SESSION_MAX_HOURS", "WORKER_TIMEOUT_S", "SWEEP_EVERY_S", "STORAGE_QUOTA_BYTES",
                "MIN_FREE_DISK_BYTES", "BODY_MIN_RATE", "BODY_GRACE_S", "JOB_THREADS", "JOB_TIME_LIMIT_S",
                "JOB_STALE_AFTER_S", "JOB_MAX_ATTEMPTS", "JOB_QUEUE_TIMEOUT_S", "API_WAIT_S"):
        if f"JOINTSCAN_{key}" in os.environ:
            app.config[key] = int(os.environ[f"JOINTSCAN_{key}"])
    for key in ("MODELS_DIR", "ENV_NAME", "RESULTS_DIR", "RATELIMIT_STORAGE_URI", "LOGIN_LIMITS_PER_ACCOUNT",
                "LOGIN_LIMITS_PER_ADDRESS", "SIGNUP_LIMITS_PER_ADDRESS", "ANALYSIS_LIMITS_PER_USER",
                "ANALYSIS_LIMITS_PER_ADDRESS", "DICOMWEB_URL", "DICOMWEB_USER", "DICOMWEB_PASSWORD"):
        if f"JOINTSCAN_{key}" in os.environ:
            app.config[key] = os.environ[f"JOINTSCAN_{key}"]
    for key in ("UPLOAD_WAIT_S", "JOB_HEARTBEAT_S", "KNEE_KL_SDC", "HAND_SDC", "SIJ_BME_SDC_ML"):   # fractions
        if f"JOINTSCAN_{key}" in os.environ:
            app.config[key] = float(os.environ[f"JOINTSCAN_{key}"])
    # REDIS_URL as Docker images and platforms name it; JOINTSCAN_REDIS_URL wins when both are set.
    for key in ("REDIS_URL", "JOINTSCAN_REDIS_URL"):
        if os.environ.get(key):
            app.config["REDIS_URL"] = os.environ[key]
    if os.environ.get("JOINTSCAN_SESSION_COOKIE_SECURE", "").lower() in TRUE_WORDS:
        app.config["SESSION_COOKIE_SECURE"] = app.config["REMEMBER_COOKIE_SECURE"] = True
    if "JOINTSCAN_SIGNUP_OPEN" in os.environ:
        app.config["SIGNUP_OPEN"] = os.environ["JOINTSCAN_SIGNUP_OPEN"].lower() in TRUE_WORDS
    if os.environ.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
    if os.environ.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]


def weak_secret_key(key: str | None) -> str | None:
    """Why `key` must not sign production cookies, or None when it is acceptable."""
    if not key:
        return "SECRET_KEY must be set in the environment when JOINTSCAN_ENV_NAME=production."
    if key.strip().lower() in WEAK_SECRET_KEYS:
        return "SECRET_KEY is a well-known default value; set a random one (python -c 'import secrets; print(secrets.token_hex(32))')."
    if len(key) < MIN_SECRET_KEY_LENGTH or len(set(key)) < 8:
        return (f"SECRET_KEY is too short or too simple (at least {MIN_SECRET_KEY_LENGTH} random characters); "
                "python -c 'import secrets; print(secrets.token_hex(32))' makes one.")
    return None


def secret_key(app: Flask) -> str:
    """Development: a random key kept in the instance folder. Production: must come from the environment."""
    if app.config["ENV_NAME"] == "production":
        raise RuntimeError(weak_secret_key(None))
    path = Path(app.instance_path) / DEV_SECRET_FILE
    if not path.exists():
        write_private(path, secrets.token_hex(32).encode())
    return path.read_text().strip()
