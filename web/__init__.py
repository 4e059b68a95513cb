"""The web layer: one blueprint per area, registered on the application by `init_app`.

Web code never imports TensorFlow: it talks to `predict`, `model_loader` and `tasks` only.
"""
from __future__ import annotations

from flask import Flask

from web import (account, admin, api, auth, errors, filters, hand_timeline, history, knee_catalogue, login,
                 models_page, pacs, params, reviews, scans, security, timeline, upkeep)


def init_app(app: Flask) -> None:
    params.init_app(app)
    login.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(scans.bp)
    app.register_blueprint(history.bp)
    app.register_blueprint(models_page.bp)
    app.register_blueprint(timeline.bp)
    app.register_blueprint(pacs.bp)
    app.register_blueprint(hand_timeline.bp)
    app.register_blueprint(knee_catalogue.bp)
    app.register_blueprint(reviews.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(api.bp)
    api.exempt_from_form_csrf(app)
    security.init_app(app)
    security.install_rate_limits(app)
    errors.init_app(app)
    filters.register_template_helpers(app)
    security.install_response_headers(app)
    upkeep.init_app(app)
