"""Grad-CAM (Selvaraju et al. 2017) on a model built once per loaded model.

`gradcam_model` (from model_loader.LoadedModel) maps an input batch to
(feature maps of the chosen conv layer, model outputs). One forward pass
under a persistent tape serves every head we explain.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


def grad_cams(gradcam_model: Any, x: np.ndarray, targets: Sequence[tuple[str | None, int]]) -> list[np.ndarray]:
    """Class-activation maps for each (output name, class index), each float32 in [0, 1] at feature-map size.

    `output name` None means the model has a single output tensor.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        features, outputs = gradcam_model(x, training=False)
        scores = []
        for name, index in targets:
            out = outputs[name] if name is not None else outputs
            scores.append(out[:, index])
    cams = []
    for score in scores:
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)      # channel importance
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0]  # only positive evidence
        cams.append(_unit(cam.numpy()))
    del tape
    return cams


def grad_cam_scalar(gradcam_model: Any, x: np.ndarray, score_fn: Callable[[Any], Any]) -> np.ndarray:
    """Grad-CAM for an arbitrary scalar score of the outputs, float32 in [0, 1] at feature-map size.

    `score_fn(outputs)` returns one score per batch item (e.g. a segmentation class's summed softmax
    output); the map explains the first item of `x`.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x, dtype=tf.float32)
    with tf.GradientTape() as tape:
        features, outputs = gradcam_model(x, training=False)
        score = score_fn(outputs)
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)      # channel importance
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0]  # only positive evidence
    return _unit(cam.numpy())


def focus(cam: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Restrict a CAM to a region (same size as `region`), rescaled so its peak inside the region is 1."""
    import cv2

    h, w = region.shape[:2]
    up = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    inside = up * (region > 0)
    return _unit(inside)


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    peak = float(a.max()) if a.size else 0.0
    return a / peak if peak > 1e-12 else np.zeros_like(a)
