"""A model file whose checksum matches its registry entry but which Keras cannot load (a registry
error, e.g. a file exported by an incompatible Keras): the upload is queued (the web process does not
load models), its job fails with a reason naming the model, no result file is kept, and the other models
keep serving."""
from __future__ import annotations

import hashlib
import html
import io
import json
import zipfile

from database import Run
from model_loader import UNAVAILABLE_FOR_USERS
from tests.conftest import CLS_OURS, CLS_REF, SEG_OURS, create_user, login, result_files, run_id_from, upload


def _unloadable_keras_file(path) -> None:
    """A zip like a .keras file, but with a config Keras cannot build."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps({"class_name": "NoSuchLayerAnywhere", "config": {}}))
    path.write_bytes(buf.getvalue())


def test_checksum_matches_but_keras_cannot_load(make_app, damaged_models_dir, scan_png):
    registry = json.loads((damaged_models_dir / "registry.json").read_text())
    entry = next(m for m in registry["models"] if m["id"] == CLS_OURS)
    model_file = damaged_models_dir / entry["file"]
    _unloadable_keras_file(model_file)
    entry["sha256"] = hashlib.sha256(model_file.read_bytes()).hexdigest()
    (damaged_models_dir / "registry.json").write_text(json.dumps(registry))

    app = make_app(MODELS_DIR=str(damaged_models_dir))
    create_user(app, "alice")
    alice = app.test_client()
    assert login(alice, "alice").status_code == 302
    reg = app.extensions["jointscan.registry"]
    assert reg.problem(CLS_OURS) is None                      # the checksum check alone passes it

    public_id = run_id_from(upload(alice, scan_png, model_ids=[SEG_OURS, CLS_OURS]))
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == "failed" and f"model '{entry['title']}' is unavailable" in run.error
        assert Run.query.count() == 1
    text = html.unescape(alice.get(f"/runs/{public_id}").get_data(as_text=True))
    assert f"Model '{entry['title']}' is unavailable".lower() in text.lower() and UNAVAILABLE_FOR_USERS in text
    assert entry["file"] not in text                          # the detail is for administrators and the log
    assert result_files(app) == []
    assert not reg.is_loaded(CLS_OURS)                        # a failed load is not cached as a model

    run_id = run_id_from(upload(alice, scan_png, model_ids=[SEG_OURS, CLS_REF]))   # the others still serve
    assert alice.get(f"/runs/{run_id}").status_code == 200
