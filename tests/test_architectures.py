"""Architectures build as specified, metrics match hand-computed values, shipping round-trips."""
from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from imaging.gradcam import grad_cam_scalar, grad_cams  # noqa: E402
from imaging.layers import Int8Conv2D, Int8Conv2DTranspose, custom_objects  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from tasks.metrics import (accuracy, classification_report, confusion_matrix, dice, dice_per_case,  # noqa: E402
                           dice_per_class, macro_f1, mae, per_class_f1, per_class_precision, per_class_recall,
                           quadratic_weighted_kappa)
from training.architectures import attention_unet, cnn3_reference, dual_head_classifier, unet  # noqa: E402
from training.export import register_model, save_for_shipping, storage_note, write_model_card  # noqa: E402
from training.quantize import quantize_convolutions, quantize_kernel  # noqa: E402


# -- architectures -------------------------------------------------------------------------
def test_attention_unet_binary_and_multiclass():
    m = attention_unet()
    assert m.input_shape == (None, 128, 128, 1)
    assert m.output_shape == (None, 128, 128, 1)
    assert m.get_layer("mask").activation.__name__ == "sigmoid"
    assert 50_000 < m.count_params() < 500_000
    assert any(layer.name.endswith("_att_gated") for layer in m.layers)   # attention gates on the skips
    x = np.random.default_rng(0).random((2, 128, 128, 1), dtype=np.float32)
    y = np.asarray(m(x, training=False))
    assert y.shape == (2, 128, 128, 1) and (y >= 0).all() and (y <= 1).all()

    m4 = attention_unet((64, 96, 1), n_classes=4)
    y4 = np.asarray(m4(np.zeros((1, 64, 96, 1), np.float32), training=False))
    assert y4.shape == (1, 64, 96, 4)
    np.testing.assert_allclose(y4.sum(-1), 1.0, atol=1e-5)               # softmax over classes


def test_reference_unet_is_the_original_design():
    m = unet()
    assert m.output_shape == (None, 128, 128, 1)
    assert 7_000_000 < m.count_params() < 8_500_000                        # ~7.7 M
    convs = [layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)
             and not isinstance(layer, keras.layers.Conv2DTranspose)]
    assert sorted({c.filters for c in convs if c.name != "mask"}) == [64, 128, 256, 512]


@pytest.mark.parametrize("builder, shape, limits", [
    (dual_head_classifier, (128, 160, 2), (50_000, 300_000)),
    (cnn3_reference, (128, 128, 1), (4_000_000, 4_500_000)),
])
def test_classifiers_have_two_named_heads_and_gradcam_layer(builder, shape, limits):
    m = builder()
    assert m.input_shape == (None, *shape)
    assert limits[0] < m.count_params() < limits[1]
    out = m(np.zeros((3, *shape), np.float32), training=False)
    assert isinstance(out, dict) and set(out) == {"as_status", "stage"}
    assert tuple(out["as_status"].shape) == (3, 2) and tuple(out["stage"].shape) == (3, 4)
    np.testing.assert_allclose(np.asarray(out["stage"]).sum(-1), 1.0, atol=1e-5)
    layer = m.get_layer("gradcam_conv")
    assert isinstance(layer, keras.layers.Conv2D) and len(layer.output.shape) == 4


def test_cnn3_reference_layout():
    m = cnn3_reference()
    assert [m.get_layer(n).filters for n in ("conv1", "conv2", "gradcam_conv")] == [32, 64, 128]
    assert m.get_layer("fc").units == 128
    assert m.get_layer("head_dropout").rate == 0.5


def test_custom_objects_are_the_int8_convolutions():
    assert set(custom_objects().values()) == {Int8Conv2D, Int8Conv2DTranspose}


# -- metrics (hand-computed) ------------------------------------------------------------------
def test_dice_binary_and_per_class():
    a = np.array([[1, 1, 0], [0, 1, 0]])
    b = np.array([[1, 0, 0], [0, 1, 1]])
    assert dice(a, b) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(np.zeros(4), np.zeros(4)) == 1.0
    assert dice(np.ones(4), np.zeros(4)) == 0.0
    np.testing.assert_allclose(dice_per_case(np.stack([a, a]), np.stack([b, a])), [2 / 3, 1.0])
    pred = np.array([0, 1, 1, 2, 2, 0])
    true = np.array([0, 1, 2, 2, 2, 1])
    d = dice_per_class(pred, true, 4)
    assert np.isnan(d[0]) and np.isnan(d[3])          # background excluded; class 3 absent everywhere
    assert d[1] == pytest.approx(2 * 1 / (2 + 2)) and d[2] == pytest.approx(2 * 2 / (2 + 3))
    assert dice_per_class(pred, true, 3, include_background=True)[0] == pytest.approx(2 * 1 / (2 + 1))


def test_classification_metrics_hand_computed():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    cm = confusion_matrix(true, pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [1, 0, 2]])
    assert accuracy(pred, true) == pytest.approx(5 / 8)
    np.testing.assert_allclose(per_class_recall(true, pred, 3), [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(per_class_precision(true, pred, 3), [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(per_class_f1(true, pred, 3), [2 / 3, 1 / 2, 2 / 3])
    assert macro_f1(true, pred, 3) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert mae(pred, true) == pytest.approx((1 + 1 + 2) / 8)
    # a class never predicted has precision 0 (not NaN); a class absent everywhere is NaN and skipped
    assert per_class_precision([0, 1], [0, 0], 3)[1] == 0.0
    assert np.isnan(per_class_f1([0, 1], [0, 0], 3)[2])
    assert macro_f1([0, 1], [0, 0], 3) == pytest.approx((2 / 3 + 0.0) / 2)


def test_quadratic_weighted_kappa_hand_computed():
    assert quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == pytest.approx(1.0)
    # cm = [[1,1],[0,2]], weights w01 = w10 = 1: observed O = 1; expected from the marginals
    # (rows 2,2; columns 1,3; n = 4): e01 = 2*3/4 = 1.5, e10 = 2*1/4 = 0.5 -> E = 2; kappa = 1 - O/E
    assert quadratic_weighted_kappa([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(1 - 1 / 2)
    # off by one everywhere on a 3-class scale: weights 1/4
    k = quadratic_weighted_kappa([0, 1, 2], [1, 2, 1], 3)
    cm = np.array([[0, 1, 0], [0, 0, 1], [0, 1, 0]], float)
    w = np.array([[(i - j) ** 2 / 4 for j in range(3)] for i in range(3)])
    e = np.outer(cm.sum(1), cm.sum(0)) / 3
    assert k == pytest.approx(1 - (w * cm).sum() / (w * e).sum())


def test_classification_report_is_json_safe():
    rep = classification_report([0, 1, 1], [0, 1, 0], ("a", "b", "c"))
    json.dumps(rep)
    assert rep["recall"]["c"] is None and rep["recall"]["b"] == 0.5


# -- shipping ------------------------------------------------------------------------------
def test_save_for_shipping_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    m = dual_head_classifier()
    m.compile(optimizer="adam", loss={"as_status": "categorical_crossentropy", "stage": "categorical_crossentropy"})
    x = np.random.default_rng(1).random((4, 128, 160, 2), dtype=np.float32)
    m.fit(x, {"as_status": np.eye(2)[[0, 1, 0, 1]], "stage": np.eye(4)[[0, 1, 2, 3]]}, epochs=1, verbose=0)
    path = save_for_shipping(m, tmp_path / "m.keras")
    with zipfile.ZipFile(path) as z:
        assert "compile_config" not in json.loads(z.read("config.json"))
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    r = keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    assert {w.dtype for w in r.weights} == {"float32"}
    a, b = m(x, training=False), r(x, training=False)
    for k in ("as_status", "stage"):
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-2)
    full = tmp_path / "full.keras"
    m.save(full)
    assert path.stat().st_size < 0.75 * full.stat().st_size     # float16 storage, no optimizer state

    entry = {"id": "t-model", "task": "sacroiliac", "role": "classifier", "version": "1.0.0", "title": "T",
             "file": "m.keras", "input": {"shape": [128, 160, 2], "channels": ["image", "mask"],
                                           "crop": "joint_region"},
             "outputs": ["as_status", "stage"], "gradcam_layer": "gradcam_conv",
             "training": {"command": "python -m x", "seed": 0, "epochs": 1, "wall_time_s": 1.0}, "metrics": {}}
    stored = register_model(tmp_path, entry, model=r)
    assert stored["params"] == r.count_params() and stored["size_bytes"] == path.stat().st_size
    register_model(tmp_path, {**entry, "title": "T2"})          # upsert keeps one entry
    reg = json.loads((tmp_path / "registry.json").read_text())
    assert [e["id"] for e in reg["models"]] == ["t-model"] and reg["models"][0]["title"] == "T2"
    card = write_model_card(tmp_path, stored, {"Known failure modes and limits": "- phantoms only"})
    text = card.read_text()
    assert "Not for clinical use" in text and "phantoms only" in text and "python -m x" in text
    assert ModelRegistry(tmp_path).problem("t-model") is None


def test_quantized_reference_reloads_and_gradcam_flows(tmp_path):
    keras.utils.set_random_seed(2)
    m = cnn3_reference()
    x = np.random.default_rng(2).random((1, 128, 128, 1), dtype=np.float32)
    m.quantize("int8")
    path = save_for_shipping(m, tmp_path / "q.keras")
    r = keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    assert r.get_layer("fc").kernel.dtype == "int8"
    np.testing.assert_allclose(np.asarray(r(x)["stage"]), np.asarray(m(x)["stage"]), atol=1e-2)
    gm = keras.Model(r.inputs, [r.get_layer("gradcam_conv").output, r.output])
    cams = grad_cams(gm, x, [("as_status", 1), ("stage", 2)])
    assert all(c.shape == (32, 32) and np.isfinite(c).all() for c in cams)


def _tiny_trained_unet(seed: int = 3):
    """A tiny U-Net with random (non-zero) kernels and biases, standing in for a trained one."""
    keras.utils.set_random_seed(seed)
    m = unet((32, 32, 1), filters=(8, 16, 32, 64), name="tiny_unet")
    rng = np.random.default_rng(seed)
    m.set_weights([w + rng.normal(0, 0.05, w.shape).astype(np.float32) for w in m.get_weights()])
    return m


def test_quantize_kernel_per_output_channel():
    k = np.random.default_rng(0).normal(0, 0.1, (3, 3, 4, 5)).astype(np.float32)
    k[..., 2] = 0.0                                            # a dead channel
    q, scale = quantize_kernel(k)
    assert q.dtype == np.int8 and q.shape == k.shape and scale.shape == (5,) and np.abs(q).max() <= 127
    assert scale[2] == 1.0 and not q[..., 2].any()
    np.testing.assert_array_equal(scale.astype(np.float16).astype(np.float32), scale)   # float16 storage is exact
    assert (np.abs(q * scale - k) <= scale / 2 + 1e-9).all()                      # round to nearest step
    qt, st = quantize_kernel(np.moveaxis(k, -1, -2), out_axis=-2)                  # Conv2DTranspose layout
    np.testing.assert_array_equal(np.moveaxis(qt, -2, -1), q)
    np.testing.assert_array_equal(st, scale)


def test_int8_convolutions_round_trip(tmp_path):
    """Convert a U-Net (Conv2D + Conv2DTranspose), ship, reload: int8 kernels in the file, same outputs."""
    m = _tiny_trained_unet()
    m.compile(optimizer="adam", loss=lambda y, p: keras.ops.mean((y - p) ** 2))   # unregistered loss, as in training
    x = np.random.default_rng(4).random((2, 32, 32, 1), dtype=np.float32)
    before = [w.copy() for w in m.get_weights()]
    q = quantize_convolutions(m)
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))   # the float model is untouched
    assert [layer.name for layer in q.layers] == [layer.name for layer in m.layers]
    assert isinstance(q.get_layer("enc0_conv1"), Int8Conv2D) and isinstance(q.get_layer("mask"), Int8Conv2D)
    assert isinstance(q.get_layer("dec0_up"), Int8Conv2DTranspose)

    float_path = save_for_shipping(m, tmp_path / "float.keras")
    path = save_for_shipping(q, tmp_path / "int8.keras")
    assert path.stat().st_size < 0.65 * float_path.stat().st_size
    with zipfile.ZipFile(path) as z:
        (tmp_path / "w.h5").write_bytes(z.read("model.weights.h5"))
    with h5py.File(tmp_path / "w.h5", "r") as f:
        kernels = [g for n, g in f["layers"].items() if n.startswith("int8_conv2d")]
        assert len(kernels) == 18                                 # 15 Conv2D + 3 Conv2DTranspose
        assert all(g["vars/0"].dtype == np.int8 and g["vars/0"].ndim == 4 for g in kernels)
    assert "int8 with one scale per output channel" in storage_note(path)

    r = keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    assert r.get_layer("enc1_conv2").kernel_int8.dtype == "int8"
    y_float, y_q, y_r = (np.asarray(mm(x, training=False)) for mm in (m, q, r))
    np.testing.assert_allclose(y_r, y_q, atol=2e-3)                 # storage adds only float16 biases' rounding
    np.testing.assert_allclose(y_r, y_float, atol=5e-3)
    assert np.abs(y_r - y_float).mean() < 1e-3 < y_float.std()      # small against the outputs' own spread
    gm = keras.Model(r.inputs, [r.get_layer("dec0_conv2").output, r.output])   # gradients flow through int8 convs
    cam = grad_cam_scalar(gm, x[:1], lambda out: keras.ops.mean(out, axis=(1, 2, 3)))
    assert np.isfinite(cam).all() and cam.shape[:2] == (32, 32)

