"""docker-compose.yml (the scaled set-up) holds together with the app it runs: every service has a health check,
web and workers share one configuration, one results folder and the image's modules, and the settings
the compose file passes are ones the app reads. (No Docker daemon runs here, so the stack itself is not
started; tests/test_celery.py runs the same web + Redis + Celery worker + PostgreSQL wiring on loopback.)"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from app import create_app
from web.security import ratelimit_storage_uri

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_service_has_a_health_check_and_the_stack_starts_in_order():
    services = compose()["services"]
    assert set(services) == {"web", "worker", "postgres", "redis", "nginx"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["web"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                             "redis": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"]["web"]["condition"] == "service_healthy"   # migrated first
    assert services["nginx"]["depends_on"]["web"]["condition"] == "service_healthy"
    # Only nginx is published, on loopback.
    published = {name: s.get("ports") for name, s in services.items() if s.get("ports")}
    assert list(published) == ["nginx"] and all(p.startswith("127.0.0.1:") for p in published["nginx"])
    nginx = (REPO / "ops" / "nginx" / "jointscan.conf").read_text()
    assert re.search(r"server web:8000;", nginx)


def test_web_and_workers_share_the_database_the_broker_and_the_results_volume():
    doc = compose()
    web, worker = doc["services"]["web"], doc["services"]["worker"]
    for key in ("DATABASE_URL", "REDIS_URL", "JOINTSCAN_RESULTS_DIR", "SECRET_KEY", "JOINTSCAN_JOB_TIME_LIMIT_S"):
        assert web["environment"][key] == worker["environment"][key], key
    assert web["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    results = web["environment"]["JOINTSCAN_RESULTS_DIR"]
    assert f"results:{results}" in web["volumes"] and f"results:{results}" in worker["volumes"]
    assert {"results", "postgres-data", "redis-data"} <= set(doc["volumes"])
    assert "postgres-data:/var/lib/postgresql/data" in doc["services"]["postgres"]["volumes"]
    command = " ".join(worker["command"])
    assert "celery -A worker worker" in command and "--concurrency ${WORKER_CONCURRENCY:-1}" in command
    assert (REPO / "worker.py").is_file()
    # The image's pg_dump (Debian bookworm's client) must not be older than the server it backs up.
    assert re.fullmatch(r"postgres:15-bookworm", doc["services"]["postgres"]["image"])
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "bookworm" in dockerfile and "postgresql-client" in dockerfile and "/results" in dockerfile


def test_the_settings_compose_passes_are_read_by_the_app(monkeypatch, tmp_path):
    env = compose()["services"]["worker"]["environment"]
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("JOINTSCAN_RESULTS_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("JOINTSCAN_JOB_TIME_LIMIT_S", "77")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    assert {"JOINTSCAN_RESULTS_DIR", "JOINTSCAN_JOB_TIME_LIMIT_S", "REDIS_URL"} <= set(env)
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert app.config["RESULTS_DIR"] == str(tmp_path / "shared") and app.config["JOB_TIME_LIMIT_S"] == 77
    assert app.extensions["jointscan.executor"].name == "celery"
    assert ratelimit_storage_uri(app) == "redis://127.0.0.1:9/0"      # the login counts shared by every web node
