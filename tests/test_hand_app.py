"""The hand task in the app: a tiny registry (an untrained CenterNet detector, two hand-wired
detectors that place the eight joints where a test image tells them to, tiny untrained scorers), the task
with found, unsure and missing joints, the JSON API with and without heatmaps, the result page warning,
and the longitudinal view (owner-only, no pseudonym in any URL, changes beyond the SDC flagged)."""
from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from keras import layers
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from database import Run, db
from imaging.io import read_image
from model_loader import ModelRegistry
from tasks import get_task
from tasks.hand import TASK
from tests.conftest import create_user, login
from training.export import register_model, save_for_shipping
from training.hand.export import input_spec
from training.hand.model import guss_scorer, joint_detector

DET_UNTRAINED = "hand_tiny_detector"
DET_WIRED = "hand_wired_detector"              # all eight found, a consistent left hand
DET_WIRED_WEAK = "hand_wired_detector_weak"    # DIP5 missing, PIP4 unsure
DET_WIRED_WEAKER = "hand_wired_detector_weaker"  # DIP5 missing, PIP4 and DIP2 unsure: 5 of 8 sure
SCORER = "hand_tiny_scorer"
SCORER_POS = "hand_tiny_scorer_position"
NAMES = ("PIP2", "PIP3", "PIP4", "PIP5", "DIP2", "DIP3", "DIP4", "DIP5")
DOT = (32, 32)                                 # heatmap cell of the bright dot in `hand_png`
R = 12                                         # kernel radius (cells) of the wired detectors
PSEUDONYM = "Study-P17"


def _layout() -> dict[str, tuple[int, int]]:
    """Heatmap cells (x, y) of a left hand with the fingers up: index finger on the image right."""
    cells = {}
    for i, f in enumerate((2, 3, 4, 5)):
        cells[f"PIP{f}"] = (40 - 5 * i, 38)
        cells[f"DIP{f}"] = (40 - 5 * i, 30)
    return cells


def wired_detector(strength: dict[str, float] | None = None):
    """Standard layers only: heatmap_c(p) = sigmoid(w_c * dot(p + d_c) - 5), so a single bright dot at cell
    q gives class c its peak at q - d_c. Boxes 16x16 input pixels; P(right hand) = sigmoid(-3)."""
    inp = keras.Input((256, 256, 1), name="image")
    pooled = layers.AveragePooling2D(4, name="pool")(inp)
    heat = layers.Conv2D(8, 2 * R + 1, padding="same", activation="sigmoid", name="heatmap")(pooled)
    box = layers.Conv2D(4, 1, name="box")(pooled)
    gap = layers.GlobalAveragePooling2D(name="side_pool")(pooled)
    side = layers.Dense(1, activation="sigmoid", name="side")(gap)
    model = keras.Model(inp, {"heatmap": heat, "box": box, "side": side}, name="wired_detector")
    kernel = np.zeros((2 * R + 1, 2 * R + 1, 1, 8), np.float32)
    for c, name in enumerate(NAMES):
        px, py = _layout()[name]
        dx, dy = DOT[0] - px, DOT[1] - py
        kernel[R + dy, R + dx, 0, c] = (strength or {}).get(name, 10.0)
    model.get_layer("heatmap").set_weights([kernel, np.full(8, -5.0, np.float32)])
    model.get_layer("box").set_weights([np.zeros((1, 1, 1, 4), np.float32), np.full(4, 0.5, np.float32)])
    model.get_layer("side").set_weights([np.zeros((1, 1), np.float32), np.array([-3.0], np.float32)])
    return model


@pytest.fixture(scope="session")
def hand_models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hand_models")
    specs = [
        (DET_UNTRAINED, "detector", True, lambda: joint_detector(256, widths=(4, 4, 4, 4, 4), head_width=4),
         input_spec("hand-joint-detector"), None),
        (DET_WIRED, "detector", False, wired_detector, input_spec("hand-joint-detector"), None),
        (DET_WIRED_WEAK, "detector", False, lambda: wired_detector({"DIP5": 3.0, "PIP4": 4.8}),
         input_spec("hand-joint-detector"), None),
        (DET_WIRED_WEAKER, "detector", False, lambda: wired_detector({"DIP5": 3.0, "PIP4": 4.8, "DIP2": 4.8}),
         input_spec("hand-joint-detector"), None),
        (SCORER, "scorer", True, lambda: guss_scorer(64, widths=(4, 8, 8, 8)), input_spec("hand-guss-scorer"),
         "gradcam_conv"),
        (SCORER_POS, "scorer", False, lambda: guss_scorer(64, widths=(4, 8, 8, 8), position_aware=True),
         input_spec("hand-guss-scorer-position"), "gradcam_conv"),
    ]
    for mid, role, default, build, spec, cam in specs:
        model = build()
        save_for_shipping(model, root / f"{mid}.keras")
        register_model(root, {
            "id": mid, "task": "hand", "role": role, "version": "0.0.1", "title": mid.replace("_", " "),
            "architecture": "test", "reference": False, "default": default, "file": f"{mid}.keras",
            "input": spec, "outputs": list(model.output), "gradcam_layer": cam,
            "training": {"command": "tests", "seed": 0, "epochs": 0}, "metrics": {},
            "description": "Untrained or hand-wired model of the right shape, for tests."}, model=model)
    return root


@pytest.fixture(scope="session")
def hand_registry(hand_models_dir):
    return ModelRegistry(hand_models_dir)


@pytest.fixture
def hand_app(make_app, hand_models_dir, hand_registry):
    app = make_app(MODELS_DIR=str(hand_models_dir))
    app.extensions["jointscan.registry"] = hand_registry
    return app


@pytest.fixture
def clients(hand_app):
    ids = {"alice": create_user(hand_app, "alice"), "bob": create_user(hand_app, "bob")}
    out = {}
    for name in ids:
        c = hand_app.test_client()
        assert login(c, name).status_code == 302
        out[name] = c
    return out


@pytest.fixture(scope="session")
def hand_png() -> bytes:
    """A 512x512 'radiograph': flat background and one bright dot whose 1/8-scale cell is DOT."""
    img = np.full((512, 512), 12, np.uint8)
    y0, x0 = DOT[1] * 8, DOT[0] * 8
    img[y0:y0 + 16, x0:x0 + 16] = 250
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes()


def api_analyze(client, data: bytes, model_ids, **fields):
    form = {"task": "hand", "file": (io.BytesIO(data), "hand.png"), "model_ids": ",".join(model_ids), **fields}
    return client.post("/api/v1/analyze?wait=true", data=form, content_type="multipart/form-data")


# -- the task directly -------------------------------------------------------------------------
def test_task_declares_roles_options_and_is_registered():
    task = get_task("hand")
    assert task is not None and task.name == "hand"
    assert [r.name for r in task.roles] == ["detector", "scorer"]
    opts = {o.name: o for o in task.options}
    assert opts["pseudonym"].kind == "text" and "not" in opts["pseudonym"].help.lower()
    assert opts["timepoint"].kind == "date"


def test_wired_detector_finds_all_eight_and_the_anatomy_is_consistent(hand_registry, hand_png):
    img = read_image(hand_png)
    out = TASK.run(img, {"detector": [hand_registry.load(DET_WIRED)], "scorer": [hand_registry.load(SCORER)]}, {})
    det, sc = out.models[0].result, out.models[1].result
    assert det["n_found"] == 8 and det["anatomy_ok"] and det["side"] == "left"
    assert out.summary["confident"] and out.summary["warnings"] == []
    assert sc["n_scored"] == 8 and sc["confident"]
    for j in sc["joints"]:
        assert j["guss"] == j["plate"] + j["space"] and 0 <= j["guss"] <= 200 and j["guss"] % 10 == 0
        assert 0 <= j["peak_probability"] <= 1 and not j["missing"]
        x1, y1, x2, y2 = j["box"]
        assert x2 - x1 == pytest.approx(32, abs=0.5)               # 16 input pixels at scale 0.5
        l, t, r, b = j["crop_box"]
        assert r - l == b - t == round(32 * 1.1)
    images = out.models[1].images
    for name in NAMES:
        assert images[f"crop_{name}"].shape == (128, 128)
        assert images[f"gradcam_stage1_{name}"].shape == (128, 128, 3)
        assert images[f"gradcam_stage2_{name}"].shape == (128, 128, 3)
    assert images["scored_joints"].shape == (512, 512, 3)


def test_missing_and_unsure_joints_are_reported_not_guessed(hand_registry, hand_png):
    out = TASK.run(read_image(hand_png), {"detector": [hand_registry.load(DET_WIRED_WEAK)],
                                          "scorer": [hand_registry.load(SCORER)]}, {})
    det = {j["name"]: j for j in out.models[0].result["joints"]}
    sc = {j["name"]: j for j in out.models[1].result["joints"]}
    assert det["DIP5"]["status"] == "missing" and det["DIP5"]["box"] is None
    assert det["PIP4"]["status"] == "unsure"
    assert sc["DIP5"]["guss"] is None and sc["DIP5"]["missing"] and sc["DIP5"]["withheld"] == "joint not found"
    assert sc["PIP4"]["guss"] is None and sc["PIP4"]["withheld"] == "detection unsure"
    assert "crop_DIP5" not in out.models[1].images
    assert sc["PIP2"]["guss"] is not None                        # the confident joints are still scored
    assert not out.summary["confident"]
    text = " ".join(out.summary["warnings"])
    assert "DIP5" in text and "PIP4" in text


def test_a_hand_with_too_few_sure_joints_gets_no_score_at_all(hand_registry, hand_png):
    out = TASK.run(read_image(hand_png), {"detector": [hand_registry.load(DET_WIRED_WEAKER)],
                                          "scorer": [hand_registry.load(SCORER)]}, {})
    det, sc = out.models[0].result, out.models[1].result
    assert det["n_found"] == 5 and det["anatomy_ok"] and not det["hand_recognised"]
    assert sc["n_scored"] == 0
    assert {j["withheld"] for j in sc["joints"] if j["status"] == "found"} == {"too few joints found with confidence"}
    assert all(j["guss"] is None and j["peak_probability"] is None for j in sc["joints"])
    assert "Only 5 of the 8" in " ".join(out.summary["warnings"])


def test_untrained_detector_reports_every_joint_missing(hand_registry, hand_png):
    out = TASK.run(read_image(hand_png), {"detector": [hand_registry.load(DET_UNTRAINED)],
                                          "scorer": [hand_registry.load(SCORER)]}, {})
    assert out.models[0].result["n_missing"] == 8
    assert out.models[1].result["n_scored"] == 0 and out.models[1].result["guss_total"] is None
    assert not out.summary["confident"]


# -- API --------------------------------------------------------------------------------------
def test_api_per_joint_fields_with_and_without_heatmaps(clients, hand_png):
    alice = clients["alice"]
    r = api_analyze(alice, hand_png, [DET_WIRED, SCORER, SCORER_POS], include_heatmaps="true",
                    pseudonym=PSEUDONYM, timepoint="2025-03-01")
    assert r.status_code == 201, r.data[:400]
    body = r.get_json()
    assert body["task"] == "hand" and body["options"] == {"pseudonym": PSEUDONYM, "timepoint": "2025-03-01"}
    det, sc, pos = body["results"]
    assert (det["role"], sc["role"], pos["role"]) == ("detector", "scorer", "scorer")
    assert pos["result"]["position_aware"] and not sc["result"]["position_aware"]
    joints = sc["result"]["joints"]
    assert [j["name"] for j in joints] == list(NAMES)
    for j in joints:
        assert {"name", "box", "plate", "space", "guss", "peak_probability", "confidence", "missing"} <= set(j)
        assert len(j["box"]) == 4 and j["missing"] is False
    assert any("gradcam_stage1" in k for k in sc["images"]) and any("gradcam_stage2" in k for k in sc["images"])
    assert "detector_heatmap" in det["images"] and "crop_PIP2" in sc["images"]
    assert "guss_difference" in body["summary"]["comparison"]
    img = alice.get(sc["images"]["gradcam_stage1_PIP2"])
    assert img.status_code == 200 and img.mimetype == "image/png"

    r2 = api_analyze(alice, hand_png, [DET_WIRED, SCORER], include_heatmaps="false")
    body2 = r2.get_json()
    assert r2.status_code == 201
    names = [k for res in body2["results"] for k in res["images"]]
    assert names and not any("gradcam" in k or "heatmap" in k for k in names)
    assert "crop_PIP2" in body2["results"][1]["images"] and "scored_joints" in body2["results"][1]["images"]
    again = alice.get(f"/api/v1/runs/{body['id']}?include_heatmaps=false").get_json()
    assert not any("gradcam" in k for res in again["results"] for k in res["images"])


def test_api_rejects_a_bad_timepoint(clients, hand_png):
    r = api_analyze(clients["alice"], hand_png, [DET_WIRED, SCORER], timepoint="March 2025")
    assert r.status_code == 400 and "date" in r.get_json()["error"]["message"]


def test_result_page_warns_when_not_confident(clients, hand_png):
    alice = clients["alice"]
    body = api_analyze(alice, hand_png, [DET_WIRED_WEAK, SCORER]).get_json()
    page = alice.get(f"/runs/{body['id']}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Not confident" in html and "DIP5" in html and "detection unsure" in html
    ok = api_analyze(alice, hand_png, [DET_WIRED, SCORER]).get_json()
    html_ok = alice.get(f"/runs/{ok['id']}").get_data(as_text=True)
    assert "Not confident" not in html_ok and "stage-2 Grad-CAM" in html_ok


# -- longitudinal view ------------------------------------------------------------------------
def _set_guss(app, run_id: str, joint: str, guss: int):
    with app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        res = next(r for r in run.results if r.role == "scorer")
        result = dict(res.result)
        result["joints"] = [dict(j, guss=guss, plate=min(100, guss), space=guss - min(100, guss))
                            if j["name"] == joint else j for j in result["joints"]]
        res.result = result
        db.session.commit()


def test_longitudinal_view_is_owner_only_flags_changes_and_keeps_the_pseudonym_out_of_urls(hand_app, clients, hand_png):
    alice, bob = clients["alice"], clients["bob"]
    ids = []
    for when in ("2024-01-10", "2024-09-02", "2025-06-20"):
        r = api_analyze(alice, hand_png, [DET_WIRED, SCORER], pseudonym=PSEUDONYM, timepoint=when)
        assert r.status_code == 201
        ids.append(r.get_json()["id"])
    for joint_guss, rid in zip((200, 150, 190), ids):          # PIP2: progression (-50), then remodelling (+40)
        _set_guss(hand_app, rid, "PIP2", joint_guss)
    for joint_guss, rid in zip((180, 170, 160), ids):          # DIP3: steps of 10, within the SDC
        _set_guss(hand_app, rid, "DIP3", joint_guss)
    bob_run = api_analyze(bob, hand_png, [DET_WIRED, SCORER], pseudonym=PSEUDONYM, timepoint="2024-05-05")
    assert bob_run.status_code == 201

    index = alice.get("/hand/timeline")
    assert index.status_code == 200 and PSEUDONYM in index.get_data(as_text=True)
    posted = alice.post("/hand/timeline", data={"pseudonym": PSEUDONYM})
    assert posted.status_code == 302
    location = posted.headers["Location"]
    assert PSEUDONYM not in location and PSEUDONYM.lower() not in location.lower()
    assert re.search(r"/hand/timeline/[0-9a-f]{32}$", location)
    page = alice.get(location)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert html.count("/runs/") >= 3 and bob_run.get_json()["id"] not in html      # only alice's runs
    assert "2024-05-05" not in html
    assert "progression (-50)" in html and "remodelling (+40)" in html
    assert "(-10)" in html and "progression (-10)" not in html                    # within the SDC: not flagged
    for href in re.findall(r'href="([^"]+)"', html):
        assert PSEUDONYM not in href

    # bob cannot use alice's key, and his own key shows only his run
    assert bob.get(location).status_code == 404
    bob_loc = bob.post("/hand/timeline", data={"pseudonym": PSEUDONYM}).headers["Location"]
    assert bob_loc != location
    assert bob.get(bob_loc).get_data(as_text=True).count('/runs/') == 1
    # an unknown pseudonym is refused on the form, and a made-up key is 404
    assert alice.post("/hand/timeline", data={"pseudonym": "nobody"}).status_code == 400
    assert alice.get("/hand/timeline/" + "0" * 32).status_code == 404

    # a larger smallest-detectable-change hides the remodelling (+40) step
    hand_app.config["HAND_SDC"] = 45
    html45 = alice.get(location).get_data(as_text=True)
    assert "progression (-50)" in html45 and "remodelling (+40)" not in html45


def test_result_page_links_to_the_timeline_without_the_pseudonym(clients, hand_png):
    alice = clients["alice"]
    body = api_analyze(alice, hand_png, [DET_WIRED, SCORER], pseudonym=PSEUDONYM).get_json()
    html = alice.get(f"/runs/{body['id']}").get_data(as_text=True)
    links = re.findall(r'href="(/hand/timeline/[0-9a-f]{32})"', html)
    assert links and all(PSEUDONYM not in h for h in links)


def test_monochrome1_dicom_hand_is_read_the_right_way_round(clients, hand_png):
    """A CR DICOM stored MONOCHROME1 (bright = low values) reaches the detector with bone bright."""
    grey = cv2.imdecode(np.frombuffer(hand_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    pixels = (1023 - grey.astype(np.uint16) * 4).astype(np.uint16)          # inverted, 10-bit
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "CR", "Doe^Jane"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 10, 9, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    form = {"task": "hand", "file": (io.BytesIO(buf.getvalue()), "hand.dcm"), "model_ids": f"{DET_WIRED},{SCORER}"}
    r = clients["alice"].post("/api/v1/analyze?wait=true", data=form, content_type="multipart/form-data")
    assert r.status_code == 201, r.data[:300]
    body = r.get_json()
    assert body["input"]["modality"] == "CR" and body["results"][0]["result"]["n_found"] == 8
    assert "Doe" not in r.get_data(as_text=True)
