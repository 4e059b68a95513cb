"""Lumbar spine MRI task: patient split, label mapping, Dice, component counting, the task on a
synthetic slice with tiny UNTRAINED models, the upload flow and the JSON API, real-data loading (skipped
without ../shared/data/spine_mri) and the training notebook's quick mode (skipped without the data)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import cv2
import nbclient
import nbformat
import numpy as np
import pytest

from database import ApiToken, Run, User, db
from imaging.io import DecodedImage
from model_loader import ModelRegistry
from predict import PredictionError, clean_options
from tasks import get_task
from tasks import spine as spine_task
from tasks.base import TaskInputError
from tasks.metrics import dice_per_class
from training.spine.data import (augment, dataset_dir, load_pair, manifest_from_folder, patient_split,
                                 read_manifest, split_rows)
from tests.conftest import create_user, login
from tests.data_gate import real_data
from training import architectures as arch
from training.export import register_model, save_for_shipping, write_model_card
from training.spine.model import ATTENTION_UNET, REFERENCE_UNET

ATT, REF = "spine_tiny_attunet", "spine_tiny_unet_ref"
needs_data = real_data(dataset_dir())


# -- split ---------------------------------------------------------------------------
def test_patient_split_is_disjoint_complete_and_deterministic():
    patients = [str(p) for p in range(1, 34)] * 3          # repeated, as slice rows would list them
    train, val = patient_split(patients, seed=7)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(patients)
    assert len(val) == 7 and len(train) == 26              # round(0.2 * 33)
    assert patient_split(list(reversed(patients)), seed=7) == (train, val)   # order of rows does not matter
    assert patient_split(patients, seed=8) != (train, val)


def test_split_rows_never_puts_a_patient_on_both_sides(tmp_path):
    rows = [{"image_path": f"{p}_{i}.png", "mask_path": f"{p}_{i}.png", "patient": p}
            for p in ("5", "7", "11", "22", "34") for i in range(4)]
    train_p, val_p = patient_split([r["patient"] for r in rows], seed=0)
    train_rows, val_rows = split_rows(rows, val_p)
    assert {r["patient"] for r in train_rows} == set(train_p)
    assert {r["patient"] for r in val_rows} == set(val_p)
    assert len(train_rows) + len(val_rows) == len(rows)


def test_manifest_round_trip_with_relative_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.zeros((64, 48), np.uint8)
    mask = np.zeros((64, 48), np.uint8)
    mask[10:20, 10:20] = 76
    for name in ("12_t2_SPACE_slice3.png", "12_t2_SPACE_slice4.png", "40_t2_SPACE_slice9.png"):
        cv2.imwrite(str(tmp_path / "images" / name), img)
        cv2.imwrite(str(tmp_path / "masks" / name), mask)
    cv2.imwrite(str(tmp_path / "images" / "99_no_mask.png"), img)   # no mask: not listed
    rows = manifest_from_folder(tmp_path)
    assert [r["patient"] for r in rows] == ["12", "12", "40"]
    csv_path = tmp_path / "clinic.csv"
    csv_path.write_text("image_path,mask_path,patient\n"
                        + "".join(f"images/{Path(r['image_path']).name},masks/{Path(r['mask_path']).name},"
                                  f"{r['patient']}\n" for r in rows))
    again = read_manifest(csv_path)
    assert [Path(r["image_path"]).resolve() for r in again] == [Path(r["image_path"]).resolve() for r in rows]
    image, labels = load_pair(again[0])
    assert image.shape == labels.shape == (64, 48) and set(np.unique(labels)) == {0, 1}
    (tmp_path / "bad.csv").write_text("image,mask\nx,y\n")
    with pytest.raises(ValueError, match="patient"):
        read_manifest(tmp_path / "bad.csv")


# -- labels, Dice, counting ------------------------------------------------------------
def test_label_mapping_round_trip():
    values = np.array([[0, 76, 29, 150], [150, 29, 76, 0]], np.uint8)
    idx = spine_task.to_class_indices(values)
    assert idx.tolist() == [[0, 1, 2, 3], [3, 2, 1, 0]]
    assert spine_task.to_dataset_values(idx).tolist() == values.tolist()
    assert spine_task.to_dataset_values(idx).dtype == np.uint8
    assert [spine_task.CLASS_NAMES[i] for i in (1, 2, 3)] == ["vertebra", "disc", "canal"]
    with pytest.raises(ValueError, match="not among"):
        spine_task.to_class_indices(np.array([[0, 77]], np.uint8))


def test_dice_on_hand_made_masks():
    a = np.zeros((6, 6), np.uint8)
    b = np.zeros((6, 6), np.uint8)
    a[0, 0:4] = 1          # vertebra: 4 px vs 2 px, 2 shared -> 2*2/6
    b[0, 0:2] = 1
    a[2, 0:2] = 2          # disc: identical
    b[2, 0:2] = 2
    a[4, 0] = 3            # canal: disjoint -> 0
    b[5, 5] = 3
    d = spine_task.dice_by_structure(a, b)
    assert d["vertebra"] == pytest.approx(2 / 3, abs=1e-4)
    assert d["disc"] == 1.0 and d["canal"] == 0.0
    assert spine_task.dice_by_structure(np.zeros((3, 3)), np.zeros((3, 3))) == {"vertebra": 1.0, "disc": 1.0, "canal": 1.0}

    assert np.allclose(dice_per_class(a, b, 4)[1:], [2 / 3, 1.0, 0.0])


def _phantom_labels(h: int = 320, w: int = 256) -> np.ndarray:
    """Four vertebral bodies with three discs between them, a canal behind, one posterior element
    island (touches no disc) and a speck below the area threshold."""
    lab = np.zeros((h, w), np.uint8)
    y = 40
    for i in range(4):
        lab[y:y + 40, 60:120] = 1                      # body
        y += 40
        if i < 3:
            lab[y:y + 10, 62:118] = 2                  # disc
            y += 10
    lab[30:y, 130:142] = 3                             # canal
    lab[120:150, 160:190] = 1                          # posterior element (900 px, no disc nearby)
    lab[300:303, 10:13] = 2                            # 9 px speck: ignored
    return lab


def test_component_counting_on_a_hand_made_mask():
    lab = _phantom_labels()
    counts = spine_task.count_structures(lab)
    assert counts == {"vertebrae": 4, "vertebra_components": 5, "discs": 3, "canal_components": 1}
    assert spine_task.min_component_px(lab.shape) == 82
    areas, mm2 = spine_task.structure_areas(lab, [0.5, 0.8])
    assert areas["disc"] == 3 * 10 * 56 + 9
    assert mm2["disc"] == pytest.approx(areas["disc"] * 0.4, abs=0.1)
    assert spine_task.structure_areas(lab, None)[1] is None


def test_labels_from_probs_resizes_probabilities_before_argmax():
    probs = np.zeros((4, 3, 4), np.float32)
    probs[..., 0] = 1
    probs[1:3, 1, :] = [0, 0, 1, 0]
    lab = spine_task.labels_from_probs(probs, (8, 6))
    assert lab.shape == (8, 6) and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 2}


def test_augmentation_keeps_labels_valid_and_never_flips():
    x = np.zeros((64, 48, 1), np.float32)
    y = np.zeros((64, 48), np.uint8)
    y[5:20, 5:15] = 1          # an object in the top-left corner stays on the left (no left-right flip)
    x[..., 0][y == 1] = 0.8
    rng = np.random.default_rng(0)
    for _ in range(20):
        ax, ay = augment(x, y, rng)
        assert ax.shape == x.shape and ay.shape == y.shape and ax.dtype == np.float32
        assert 0.0 <= ax.min() and ax.max() <= 1.0
        assert set(np.unique(ay)) <= {0, 1}
        cols = np.nonzero(ay)[1]
        assert cols.mean() < 24


# -- the task with tiny untrained models ------------------------------------------------
@pytest.fixture(scope="module")
def spine_models_dir(tmp_path_factory) -> Path:
    # Deferred: building the models loads TensorFlow.
    root = tmp_path_factory.mktemp("spine_models")
    specs = [(ATT, False, True, "dec0_2_relu",
              lambda: arch.attention_unet(input_shape=(64, 48, 1), filters=(4, 8), n_classes=4)),
             (REF, True, False, "dec0_conv2",
              lambda: arch.unet(input_shape=(64, 48, 1), filters=(4, 8), n_classes=4))]
    for mid, reference, default, cam_layer, build in specs:
        model = build()
        save_for_shipping(model, root / f"{mid}.keras")
        entry = register_model(root, {
            "id": mid, "task": "spine", "role": "segmenter", "version": "0.0.1", "title": mid,
            "architecture": mid, "reference": reference, "default": default, "file": f"{mid}.keras",
            "input": {"shape": [64, 48, 1], "channels": ["image"]}, "outputs": ["labels"],
            "gradcam_layer": cam_layer,
            "training": {"command": "python -m training.spine --quick", "seed": 0, "epochs": 0},
            "metrics": {"dice_vertebra": 0.1}, "description": "Untrained, for tests.",
        }, model=model)
        write_model_card(root, entry, {"Known failure modes and limits": "Untrained."})
    return root


def synthetic_slice(seed: int = 0) -> np.ndarray:
    """A sagittal-looking grey slice (0..1) drawn from the hand-made labels, with noise."""
    rng = np.random.default_rng(seed)
    lab = _phantom_labels()
    img = np.full(lab.shape, 0.12, np.float32)
    img[lab == 1] = 0.45
    img[lab == 2] = 0.75
    img[lab == 3] = 0.95
    img = cv2.GaussianBlur(img, (0, 0), 1.2) + rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def test_task_runs_both_models_on_a_synthetic_slice(spine_models_dir):

    reg = ModelRegistry(spine_models_dir)
    models = {"segmenter": [reg.load(ATT), reg.load(REF)]}
    img = synthetic_slice()
    image = DecodedImage(img, "dicom", "MR", {"pixel_spacing_mm": [0.6, 0.6]})
    out = spine_task.TASK.run(image, models, {"structure": "disc"})
    assert [m.model_id for m in out.models] == [ATT, REF]
    for m in out.models:
        assert m.role == "segmenter"
        label_mask = m.images["label_mask"]
        assert label_mask.shape == img.shape and label_mask.dtype == np.uint8
        assert set(np.unique(label_mask)) <= {0, 29, 76, 150}
        assert m.images["mask_overlay"].shape == img.shape + (3,)
        assert m.images["gradcam"].shape == img.shape + (3,)
        r = m.result
        assert r["structure"] == "disc"
        assert set(r["counts"]) >= {"vertebrae", "discs"}
        assert sum(r["areas_px"].values()) == int((label_mask > 0).sum())
        assert r["areas_mm2"]["vertebra"] == pytest.approx(r["areas_px"]["vertebra"] * 0.36, abs=0.1)
        json.dumps(r)                                   # stored as JSON
    comparison = out.summary["comparison"]
    assert set(comparison) >= {"vertebra_dice", "disc_dice", "canal_dice", "vertebrae_agree", "discs_agree"}
    assert all(0.0 <= comparison[f"{s}_dice"] <= 1.0 for s in spine_task.STRUCTURES)
    assert out.images["segmenter_disagreement"].shape == img.shape + (3,)
    assert out.summary["compared_models"] == [ATT, REF]
    json.dumps(out.summary)

    one = spine_task.TASK.run(DecodedImage(img, "png"), {"segmenter": [reg.load(ATT)]}, {"structure": "canal"})
    assert one.summary["comparison"] == {} and not one.images
    assert one.models[0].result["areas_mm2"] is None


def test_task_refuses_non_mri():

    with pytest.raises(TaskInputError, match="MRI"):
        spine_task.TASK.check_input(DecodedImage(np.zeros((64, 64), np.float32), "dicom", "CR"))


def test_task_is_registered_with_its_structure_option():

    task = get_task("spine")
    assert task is spine_task.TASK and task.roles[0].name == "segmenter"
    assert clean_options("spine", {}) == {"structure": "vertebra"}
    assert clean_options("spine", {"structure": "canal"}) == {"structure": "canal"}

    with pytest.raises(PredictionError):
        clean_options("spine", {"structure": "sacrum"})


# -- upload flow and API --------------------------------------------------------------------
def _png(img01: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.rint(img01 * 255).astype(np.uint8))
    assert ok
    return buf.tobytes()


def test_upload_both_models_result_compare_and_api(make_app, spine_models_dir):
    app = make_app(MODELS_DIR=str(spine_models_dir))
    uid = create_user(app, "carol")
    client = app.test_client()
    assert login(client, "carol").status_code == 302
    data = _png(synthetic_slice(1))

    page = client.get("/upload?task=spine")
    assert page.status_code == 200 and b"option-spine-structure" in page.data

    form = {"task": "spine", "scan": (io.BytesIO(data), "slice.png"), "model_ids": [ATT, REF],
            "option-spine-structure": "canal"}
    response = client.post("/upload", data=form, content_type="multipart/form-data")
    assert response.status_code == 302, response.data[:500]
    run_id = re.search(r"/runs/([0-9a-f]{32})$", response.headers["Location"]).group(1)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Vertebrae found" in html and "Spinal canal area" in html and "Grad-CAM: Spinal canal" in html
    for url in sorted(set(re.findall(r'<img src="(/runs/[0-9a-f]{32}/images/[^"]+)"', html))):
        assert client.get(url).status_code == 200, url
    compare = client.get(f"/runs/{run_id}/compare")
    assert compare.status_code == 200
    text = compare.get_data(as_text=True)
    with app.app_context():
        comparison = Run.query.filter_by(public_id=run_id).one().summary["comparison"]
    labels = {"vertebra": "Vertebra overlap (Dice)", "disc": "Disc overlap (Dice)", "canal": "Canal overlap (Dice)"}
    for structure, label in labels.items():             # each label beside its value from the run's summary
        pattern = (rf'<span class="agree-label">{re.escape(label)}</span>\s*'
                   rf'<span class="dice-value">{comparison[structure + "_dice"]:.3f}</span>')
        assert re.search(pattern, text), (structure, comparison[structure + "_dice"])

    # JSON API: each model's result links its label mask (input size, dataset values) beside the overlay.
    with app.app_context():
        row, token = ApiToken.issue(db.session.get(User, uid), "script")
        db.session.add(row)
        db.session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    api = client.post("/api/v1/analyze?wait=true", headers=headers, content_type="multipart/form-data",
                      data={"task": "spine", "file": (io.BytesIO(data), "slice.png"),
                            "model_ids": f"{ATT},{REF}", "structure": "vertebra"})
    assert api.status_code == 201, api.data[:500]
    body = api.get_json()
    assert body["summary"]["structure"] == "vertebra"
    assert "segmenter_disagreement" in body["images"]
    for res in body["results"]:
        assert {"label_mask", "mask_overlay"} <= set(res["images"])
        got = client.get(res["images"]["label_mask"].replace("http://localhost", ""), headers=headers)
        assert got.status_code == 200
        mask = cv2.imdecode(np.frombuffer(got.data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (320, 256) and set(np.unique(mask)) <= {0, 29, 76, 150}
        assert res["result"]["counts"]["vertebrae"] >= 0


# -- real data -------------------------------------------------------------------------------
@needs_data
def test_real_data_loader_finds_33_patients_and_a_pair_with_the_four_values():
    rows = manifest_from_folder()
    assert len(rows) == 692
    assert len({r["patient"] for r in rows}) == 33
    train_p, val_p = patient_split([r["patient"] for r in rows])
    assert len(val_p) == 7 and not set(train_p) & set(val_p)
    row = next(r for r in rows if Path(r["image_path"]).name == "5_t2_SPACE_slice58.png")
    image, labels = load_pair(row)
    assert image.shape == labels.shape == (320, 256)
    raw = cv2.imread(row["mask_path"], cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) == {0, 29, 76, 150}
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.array_equal(spine_task.to_dataset_values(labels), raw)
    counts = spine_task.count_structures(labels)
    assert 5 <= counts["vertebrae"] <= 9 and 5 <= counts["discs"] <= 9


@needs_data
def test_notebook_quick_mode(tmp_path, monkeypatch, venv_kernel):
    """The training notebook, top to bottom, in quick mode (both tiny models into a temp folder)."""
    out = tmp_path / "out"
    monkeypatch.setenv("JOINTSCAN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JOINTSCAN_NOTEBOOK_OUT_DIR", str(out))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    nb = nbformat.read(notebooks / "spine_training.ipynb", as_version=4)
    nbclient.NotebookClient(nb, kernel_name=venv_kernel, timeout=300,
                            resources={"metadata": {"path": str(notebooks)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    registry = json.loads((out / "registry.json").read_text())
    ids = {m["id"] for m in registry["models"]}
    assert ids == {ATTENTION_UNET, REFERENCE_UNET}
    for m in registry["models"]:
        assert (out / m["file"]).exists() and (out / m["card"]).exists()
        assert m["training"]["split"] and not set(m["training"]["split"]) & set(m["training"]["train_patients"])
        assert {"dice_vertebra", "dice_disc", "dice_canal"} <= set(m["metrics"])
