"""Application factory: configuration, extensions, blueprints and the CLI commands."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask, jsonify
from flask_wtf.csrf import CSRFProtect

import cli
import jobs
import web
from config import Config, load_environment, secret_key, weak_secret_key
from database import db, migrate
from model_loader import ModelRegistry
from web.slow_clients import BufferedBody
from private_files import private_dir

csrf = CSRFProtect()


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(Config)
    if "JOINTSCAN_INSTANCE_PATH" in os.environ:
        app.instance_path = os.environ["JOINTSCAN_INSTANCE_PATH"]
    private_dir(app.instance_path)      # the database, the key, the throttling counts, every scan: 0700
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{Path(app.instance_path) / 'jointscan.sqlite'}"
    load_environment(app)
    if test_config:
        app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secret_key(app)
    if app.config["ENV_NAME"] == "production":
        problem = weak_secret_key(app.config["SECRET_KEY"])
        if problem:
            raise RuntimeError(problem)
    # The request body limit sits a little above the file limit, for the multipart envelope.
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_BYTES"] + 1 * 2**20
    app.config.setdefault("RESULTS_DIR", str(Path(app.instance_path) / "results"))
    private_dir(app.config["RESULTS_DIR"])

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent / "migrations"))
    csrf.init_app(app)
    app.extensions["jointscan.registry"] = ModelRegistry(app.config["MODELS_DIR"])

    jobs.init_app(app)
    web.init_app(app)
    # Outermost: the body is read in full, at a minimum rate, before anything else runs (web/slow_clients.py).
    app.wsgi_app = BufferedBody(app.wsgi_app, max_bytes=app.config["MAX_CONTENT_LENGTH"],
                                min_rate=float(app.config["BODY_MIN_RATE"]), grace_s=float(app.config["BODY_GRACE_S"]))

    @app.get("/healthz")
    def healthz():
        # Liveness plus a cheap database round trip, for Docker's health check.
        db.session.execute(db.text("SELECT 1"))
        return jsonify(status="ok")

    cli.register(app)
    return app
