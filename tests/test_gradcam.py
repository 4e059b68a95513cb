"""Grad-CAM: the compiled computation equals the textbook eager one, for every head and class."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from imaging.gradcam import batch_grad_cams, focus, grad_cams


@pytest.fixture(scope="module")
def two_head_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((24, 24, 2))
    feat = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="gradcam_conv")(inp)
    pooled = keras.layers.GlobalAveragePooling2D()(feat)
    out = {"a": keras.layers.Dense(2, activation="softmax", name="a")(pooled),
           "b": keras.layers.Dense(4, activation="softmax", name="b")(pooled)}
    model = keras.Model(inp, out)
    return keras.Model(model.inputs, [model.get_layer("gradcam_conv").output, model.output])


def _eager(gm, x, name, index):
    with tf.GradientTape() as tape:
        feats, outs = gm(tf.constant(x), training=False)
        score = outs[name][:, index]
    grads = tape.gradient(score, feats)
    cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * feats, -1))[0].numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def test_compiled_matches_eager_for_each_head_and_class(two_head_model):
    x = np.random.default_rng(0).random((1, 24, 24, 2), dtype=np.float32)
    for a_idx, b_idx in [(0, 0), (1, 3), (0, 2)]:   # new class indices reuse the compiled function
        cams = grad_cams(two_head_model, x, [("a", a_idx), ("b", b_idx)])
        assert [c.shape for c in cams] == [(24, 24), (24, 24)]
        np.testing.assert_allclose(cams[0], _eager(two_head_model, x, "a", a_idx), atol=1e-5)
        np.testing.assert_allclose(cams[1], _eager(two_head_model, x, "b", b_idx), atol=1e-5)
        assert all(0.0 <= c.min() and c.max() <= 1.0 for c in cams)


def test_focus_keeps_only_the_region():
    cam = np.ones((8, 8), np.float32)
    cam[0, 0] = 5.0                       # the global peak lies outside the region
    region = np.zeros((16, 16), np.uint8)
    region[8:, 8:] = 1
    out = focus(cam, region)
    assert out.shape == (16, 16)
    assert out[:8].max() == 0 and out[:, :8].max() == 0
    assert np.isclose(out[8:, 8:].max(), 1.0)


def test_batch_maps_equal_one_item_at_a_time(two_head_model):
    """batch_grad_cams: each item of the batch gets the map it would get alone, per score function."""
    x = np.random.default_rng(5).random((3, 24, 24, 2), dtype=np.float32)
    stacks = batch_grad_cams(two_head_model, x, [lambda o: o["a"][:, 1], lambda o: o["b"][:, 2]])
    assert [s.shape for s in stacks] == [(3, 24, 24), (3, 24, 24)]
    for i in range(3):
        np.testing.assert_allclose(stacks[0][i], _eager(two_head_model, x[i:i + 1], "a", 1), atol=1e-5)
        np.testing.assert_allclose(stacks[1][i], _eager(two_head_model, x[i:i + 1], "b", 2), atol=1e-5)
