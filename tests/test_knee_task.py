"""Knee task end to end on a tiny model: a quick training run (real knees when the data folder is there,
phantoms otherwise) that ships a model, its catalogue and registry entry; the catalogue round trip through
those files; the task's run on a knee; the upload flow and the catalogue pages through the Flask client."""
from __future__ import annotations

import io
import json
import shutil

import cv2
import keras
import numpy as np
import pytest

from database import Run
from imaging.io import DecodedImage, read_image
from model_loader import ModelRegistry
from tasks.base import TaskInputError
from tasks.knee import GRADE_NAMES, TASK, catalogue_for, decide
from tasks.knee_catalogue import load_catalogue, remove_directions
from tasks.metrics import accuracy, mae
from tests.conftest import create_user, login, run_id_from
from training.export import sha256_file
from training.knee.__main__ import main
from training.knee.catalogue import cams_batch, make_catalogue
from training.knee.config import QUICK_CONFIG, Config
from training.knee.data import load_data
from training.knee.ensemble import combine, embedding_scales, gradcam_layers, severity_basis_of
from training.knee.evaluate import predict_tta
from training.knee.model import build
from training.knee.phenotypes import build_catalogue, save_catalogue
from training.phantoms.knee import generate_knee

MODEL_ID = "knee-kl-grader"


@pytest.fixture(scope="module")
def knee_models_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("knee_models")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def knee_ensemble_dir(tmp_path_factory):
    """Two quick graders (seeds 0 and 1) shipped as one ensemble file, the form the committed model has."""
    root = tmp_path_factory.mktemp("knee_ensemble")
    works = [str(root / f"member{s}") for s in (0, 1)]
    for seed, work in zip((0, 1), works):
        assert main(["--quick", "--seed", str(seed), "--stage", "train", "--work", work]) == 0
    out = root / "models"
    assert main(["--quick", "--stage", "export", "--members", *works, "--out", str(out)]) == 0
    return out


@pytest.fixture
def knee_dir(knee_ensemble_dir):
    """The shipped (ensemble) model's folder; the task finds the catalogue beside the loaded model's file."""
    return knee_ensemble_dir


def phantom_png(seed=4, side="R") -> bytes:
    ok, buf = cv2.imencode(".png", generate_knee(seed, grade=3, side=side).image)
    assert ok
    return buf.tobytes()


def test_quick_run_ships_model_catalogue_and_entry(knee_models_dir):
    reg = json.loads((knee_models_dir / "registry.json").read_text())
    entry = next(m for m in reg["models"] if m["id"] == MODEL_ID)
    assert entry["task"] == "knee" and entry["role"] == "grader"
    assert entry["input"]["decision_head"] in ("regression", "coral", "mean")
    cat = entry["input"]["catalogue"]
    for kind in ("json", "npz"):
        assert (knee_models_dir / cat[kind]).exists() and len(cat[f"{kind}_sha256"]) == 64
    assert (knee_models_dir / entry["card"]).exists()
    assert set(entry["outputs"]) == {"kl_value", "kl_coral", "mirrored", "embedding"}
    # The published figures are the shipped file's on the val set: recompute them from that file.
    _, val, _ = load_data(QUICK_CONFIG, True, lambda m: None)
    shipped = keras.models.load_model(knee_models_dir / entry["file"], compile=False)
    pred = predict_tta(shipped, val.images)
    metrics = entry["metrics"]["val"]
    assert metrics["n"] == len(val.grades) > 0
    for h in ("regression", "coral", "mean"):
        grades, _ = decide(pred["kl_value"], pred["kl_coral"], h)
        assert metrics[h]["accuracy"] == pytest.approx(accuracy(grades, val.grades), abs=1e-4), h
        assert metrics[h]["mae"] == pytest.approx(mae(grades, val.grades), abs=1e-4), h


def test_fine_tuning_at_a_higher_resolution_starts_from_the_first_stage(knee_models_dir, tmp_path):
    """--init: the first stage's weights carry over to another input size (the trunk is fully
    convolutional), and the registry and card record both stages' commands."""
    ckpt = knee_models_dir / ".work" / f"{MODEL_ID}.ckpt.keras"
    first = keras.models.load_model(ckpt, compile=False)
    cfg = Config(**{**QUICK_CONFIG.__dict__, "size": 80, "init": str(ckpt)})
    second = build(cfg)
    second.set_weights(first.get_weights())
    x = np.random.default_rng(0).random((2, 80, 80, 1), np.float32)
    assert second(x, training=False)["kl_coral"].shape == (2, 4)

    out = tmp_path / "models"
    assert main(["--quick", "--out", str(out), "--size", "80", "--init", str(ckpt), "--lr", "0.001"]) == 0
    entry = next(m for m in json.loads((out / "registry.json").read_text())["models"] if m["id"] == MODEL_ID)
    assert entry["input"]["shape"] == [80, 80, 1]
    command = entry["training"]["command"]
    stage1, stage2 = command.split(" && ")
    assert "--quick --size 64" in stage1 and "--stage train" in stage1
    assert "--size 80" in stage2 and f"--init {ckpt}" in stage2 and "--lr 0.001" in stage2
    card = (out / entry["card"]).read_text()
    assert "Two stages" in card and "at 64 px" in card


def test_ensemble_ships_one_file_averaging_its_members(knee_ensemble_dir):
    """One registry entry and file: heads = the members' mean, embedding = the members' embeddings side by
    side (each scaled by one number), one Grad-CAM layer per member, both members' commands recorded."""
    entry = next(m for m in json.loads((knee_ensemble_dir / "registry.json").read_text())["models"]
                 if m["id"] == MODEL_ID)
    assert entry["gradcam_layer"] == ["m0_gradcam_conv", "m1_gradcam_conv"]
    assert [m["seed"] for m in entry["training"]["members"]] == [0, 1]
    cmds = entry["training"]["command"].split(" && ")
    assert len(cmds) == 3 and "--seed 1 --stage train --work" in cmds[1] and "--stage export --members" in cmds[2]
    card = (knee_ensemble_dir / entry["card"]).read_text()
    assert "Member 2 (training seed 1)" in card and "`m0_gradcam_conv`, `m1_gradcam_conv`" in card

    shipped = keras.models.load_model(knee_ensemble_dir / entry["file"], compile=False)
    assert gradcam_layers(shipped) == entry["gradcam_layer"]
    members = [keras.models.load_model(knee_ensemble_dir.parent / f"member{s}" / f"{MODEL_ID}.ckpt.keras",
                                       compile=False) for s in (0, 1)]
    x = np.random.default_rng(1).random((4, 64, 64, 1), np.float32)
    got = {k: np.asarray(v) for k, v in shipped(x, training=False).items()}
    outs = [{k: np.asarray(v) for k, v in m(x, training=False).items()} for m in members]
    for head in ("kl_value", "kl_coral", "mirrored"):          # float16 storage: a small tolerance
        np.testing.assert_allclose(got[head], (outs[0][head] + outs[1][head]) / 2, atol=0.02)
    d = outs[0]["embedding"].shape[1]
    assert got["embedding"].shape[1] == 2 * d
    for i, o in enumerate(outs):
        block, ref = got["embedding"][:, i * d:(i + 1) * d].ravel(), o["embedding"].ravel()
        scale = float(block @ ref / (ref @ ref))
        assert scale > 0 and np.abs(block - scale * ref).max() < 0.02 * np.abs(block).max()
    images = (np.random.default_rng(3).random((12, 64, 64)) * 255).astype(np.uint8)
    for m, scale in zip(members, embedding_scales(members, images)):  # equal spread: RMS length 1 once scaled
        E = remove_directions(predict_tta(m, images)["embedding"], severity_basis_of(m)) * scale
        assert np.sqrt(((E - E.mean(axis=0)) ** 2).sum(axis=1).mean()) == pytest.approx(1.0, rel=1e-6)
    basis = severity_basis_of(shipped)                         # each member's head directions, in its block
    assert basis.shape == (2 * d, 4) and np.allclose(basis.T @ basis, np.eye(4), atol=1e-6)
    assert np.allclose(basis[:d, 2:], 0) and np.allclose(basis[d:, :2], 0)


def test_grad_cam_of_an_ensemble_of_identical_members_is_the_member_map(knee_models_dir):
    """The ensemble's Grad-CAM adds the members' weighted maps before the ReLU: two copies of one grader
    must give exactly that grader's map (and its outputs)."""
    grader = keras.models.load_model(knee_models_dir / ".work" / f"{MODEL_ID}.ckpt.keras", compile=False)
    twin = combine([grader, grader], [1.0, 1.0])
    images = (np.random.default_rng(2).random((3, 64, 64)) * 255).astype(np.uint8)
    np.testing.assert_allclose(cams_batch(twin, images), cams_batch(grader, images), atol=1e-4)
    x = images[..., None].astype(np.float32) / 255.0
    np.testing.assert_allclose(np.asarray(twin(x)["kl_value"]), np.asarray(grader(x)["kl_value"]), atol=1e-6)
    with pytest.raises(ValueError):
        combine([grader], [1.0])


def test_catalogue_round_trip_through_the_model_files(knee_dir):
    """Fit -> files beside the model -> registry load -> the same clusters and assignments."""
    reg = ModelRegistry(knee_dir)
    loaded = reg.load(MODEL_ID)
    cat = catalogue_for(loaded)
    train, _, _ = load_data(QUICK_CONFIG, True, lambda m: None)
    fresh, pred, grades = make_catalogue(loaded.model, train.images, loaded.entry.input["decision_head"],
                                         log=lambda m: None)
    assert sorted(cat.grades) == sorted(fresh.grades)
    for g in fresh.grades:
        np.testing.assert_array_equal(cat.grades[g].labels, fresh.grades[g].labels)
    got = [(a.grade, a.cluster, a.strength) for a in cat.assign_many(pred["embedding"], grades)]
    want = [(a.grade, a.cluster, a.strength) for a in fresh.assign_many(pred["embedding"], grades)]
    assert got == want


def test_task_run_grade_side_gradcam_and_phenotype(knee_dir):
    reg = ModelRegistry(knee_dir)
    lm = reg.load(MODEL_ID)
    image = read_image(phantom_png())
    TASK.check_input(image)
    out = TASK.run(image, {"grader": [lm]}, {"side": "R"})
    res = out.models[0].result
    assert 0 <= res["grade"] <= 4 and res["grade_name"] == GRADE_NAMES[res["grade"]]
    assert sum(res["grade_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert res["side"] == "R" and res["side_source"] == "form"
    ph = res["phenotype"]
    assert set(ph) >= {"assigned", "name", "strength"}
    assert ph["assigned"] or ph["name"] == "No phenotype"
    cam = out.models[0].images["gradcam_grade"]
    assert cam.shape == (image.height, image.width, 3) and cam.dtype == np.uint8
    json.dumps(res)                                     # stored as JSON
    auto = TASK.run(image, {"grader": [lm]}, {"side": "auto"}).models[0].result
    assert auto["side_source"] == "detected" and auto["side"] in ("L", "R")
    assert TASK.headline({}, [{"role": "grader", "result": res}]).startswith(f"KL {res['grade']}")


def test_damaged_catalogue_keeps_the_grade(knee_models_dir, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(knee_models_dir, copy)
    npz = next(copy.glob("*.catalogue.npz"))
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    lm = ModelRegistry(copy).load(MODEL_ID)
    res = TASK.run(read_image(phantom_png()), {"grader": [lm]}, {"side": "auto"}).models[0].result
    assert 0 <= res["grade"] <= 4
    assert res["phenotype"]["name"] == "Phenotype unavailable" and "damaged" in res["phenotype"]["reason"]


def test_task_rejects_mri_and_tiny_images():
    with pytest.raises(TaskInputError):
        TASK.check_input(DecodedImage(np.zeros((128, 128), np.float32), "dicom", "MR"))
    with pytest.raises(TaskInputError):
        TASK.check_input(DecodedImage(np.zeros((20, 20), np.float32), "png", None))
    TASK.check_input(DecodedImage(np.zeros((224, 224), np.float32), "dicom", "CR"))


@pytest.fixture
def knee_app(make_app, knee_dir):
    app = make_app(MODELS_DIR=str(knee_dir))
    create_user(app, "carol")
    return app


def test_upload_flow_and_catalogue_pages(knee_app, knee_dir):
    client = knee_app.test_client()
    assert login(client, "carol").status_code == 302
    form = {"task": "knee", "scan": (io.BytesIO(phantom_png()), "knee.png"), "model_ids": [MODEL_ID],
            "option-knee-side": "auto"}
    resp = client.post("/upload", data=form, content_type="multipart/form-data")
    run_id = run_id_from(resp)
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Kellgren-Lawrence grade" in page and "Phenotype card" in page
    assert "Grad-CAM" in page
    assert "/knee/phenotypes/knee-kl-grader/" in page    # link to the grade's catalogue page

    with knee_app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        res = run.results[0].result
        assert run.status == "done" and run.results[0].model_id == MODEL_ID
        grade = res["grade"]
    cat_page = client.get(f"/knee/phenotypes/{MODEL_ID}/{grade}")
    assert cat_page.status_code == 200 and f"KL {grade} knees" in cat_page.get_data(as_text=True)
    assert client.get("/knee/phenotypes").status_code == 200
    assert client.get("/knee/phenotypes/no-such-model/1").status_code == 404
    assert client.get(f"/knee/phenotypes/{MODEL_ID}/9").status_code == 404
    # thumbnails: see test_catalogue_thumbnails_are_served (the quick catalogue may hold no cluster)
    # a bad side value is refused before anything runs
    bad = dict(form, scan=(io.BytesIO(phantom_png()), "knee.png"), **{"option-knee-side": "middle"})
    assert client.post("/upload", data=bad, content_type="multipart/form-data").status_code == 400
    card_page = client.get(f"/models/{MODEL_ID}").get_data(as_text=True)     # the ensemble's model card
    assert "<code>m0_gradcam_conv</code>, <code>m1_gradcam_conv</code>" in card_page
    anon = knee_app.test_client()
    assert anon.get(f"/knee/phenotypes/{MODEL_ID}/1").status_code == 302


def test_catalogue_thumbnails_are_served(make_app, knee_dir, tmp_path):
    """The shipped model with a catalogue that has clusters (three blobs filed under KL 2): every
    thumbnail of an existing cluster is a PNG of the stored image; a missing cluster is a 404."""
    models = tmp_path / "models"
    shutil.copytree(knee_dir, models)
    rng = np.random.default_rng(0)
    E = np.concatenate([rng.normal(0, 0.6, (40, 6)) + np.pad(c, (0, 4)) for c in ((0, 0), (6, 0), (0, 6))])
    images = rng.uniform(0, 1, (len(E), 32, 32)).astype(np.float32)
    cams = rng.uniform(0, 1, (len(E), 4, 4)).astype(np.float32)
    catalogue = build_catalogue(E, np.full(len(E), 2), images, cams, n_components=4, meta={"model_id": MODEL_ID})
    assert catalogue.grades[2].n_clusters == 3
    jpath, npath = save_catalogue(catalogue, models / f"{MODEL_ID}.keras")
    registry = json.loads((models / "registry.json").read_text())
    spec = next(m for m in registry["models"] if m["id"] == MODEL_ID)["input"]["catalogue"]
    spec.update(json=jpath.name, npz=npath.name, json_sha256=sha256_file(jpath), npz_sha256=sha256_file(npath))
    (models / "registry.json").write_text(json.dumps(registry))

    app = make_app(MODELS_DIR=str(models))
    create_user(app, "carol")
    client = app.test_client()
    assert login(client, "carol").status_code == 302
    stored = load_catalogue(models / f"{MODEL_ID}.keras").images
    for cluster in range(3):
        for kind in ("mean", "medoids", "cam", "grade_mean"):
            thumb = client.get(f"/knee/phenotypes/{MODEL_ID}/2/{cluster}/{kind}.png")
            assert thumb.status_code == 200 and thumb.mimetype == "image/png", (cluster, kind)
            png = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_UNCHANGED)
            assert png is not None and png.size > 0, (cluster, kind)
            if kind == "mean":
                np.testing.assert_array_equal(png, stored[f"g2_c{cluster}_mean"])
    assert "KL 2 knees" in client.get(f"/knee/phenotypes/{MODEL_ID}/2").get_data(as_text=True)
    assert client.get(f"/knee/phenotypes/{MODEL_ID}/2/3/mean.png").status_code == 404
    assert client.get(f"/knee/phenotypes/{MODEL_ID}/1/0/mean.png").status_code == 404
    assert client.get(f"/knee/phenotypes/{MODEL_ID}/2/0/nonsense.png").status_code == 404
