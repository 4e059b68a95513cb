"""Grad-CAM (Selvaraju et al. 2017) on a model built once per loaded model.

`gradcam_model` (from model_loader.LoadedModel) maps an input batch to
(feature maps of the chosen conv layer, model outputs). One forward pass
under a persistent tape serves every head we explain.

TensorFlow is imported inside the functions that compute a map, so the task
modules (and the web code that imports them) load without it.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Sequence

import cv2
import numpy as np


def grad_cams(gradcam_model: Any, x: np.ndarray, targets: Sequence[tuple[str | None, int]]) -> list[np.ndarray]:
    """Class-activation maps for each (output name, class index), each float32 in [0, 1] at feature-map size.

    `output name` None means the model has a single output tensor. The feature maps may be a list
    (see `_cams`). The tape runs inside one
    tf.function per (model, output names), built on first use: class indices are tensor
    arguments, so a new prediction never retraces it.
    """
    import tensorflow as tf

    names = tuple(name for name, _ in targets)
    fn = _compiled(gradcam_model, names)
    cams = fn(tf.convert_to_tensor(x, dtype=tf.float32), tf.constant([i for _, i in targets], dtype=tf.int32))
    return [_unit(cam.numpy()) for cam in cams]


_COMPILED: "weakref.WeakKeyDictionary[Any, dict[tuple, Callable]]" = weakref.WeakKeyDictionary()
_COMPILED_LOCK = threading.Lock()


def _cached(gradcam_model: Any, key: tuple, build: Callable[[], Callable]) -> Callable:
    """The compiled function stored under `key` for this model, built (once) by `build` on first use."""
    with _COMPILED_LOCK:
        per_model = _COMPILED.setdefault(gradcam_model, {})
        if key not in per_model:
            per_model[key] = build()
        return per_model[key]


def _compiled(gradcam_model: Any, names: tuple[str | None, ...]) -> Callable:
    import tensorflow as tf

    def build() -> Callable:
        @tf.function(reduce_retracing=True)
        def cams_for(x, indices):
            with tf.GradientTape(persistent=True) as tape:
                features, outputs = gradcam_model(x, training=False)
                scores = [tf.gather(outputs[name] if name is not None else outputs, indices[k], axis=1)
                          for k, name in enumerate(names)]
            return [_cam(tape.gradient(score, features), features) for score in scores]

        return cams_for

    return _cached(gradcam_model, names, build)


def _cams(grads, features):
    """Grad-CAM of every batch item (B, h, w): channel weights = mean gradient, positive evidence only.

    `features` may be a list of same-sized maps (an ensemble's members, each with its gradient): their
    weighted sums add up before the ReLU, which is the Grad-CAM of the shared score over all channels."""
    import tensorflow as tf

    if not isinstance(features, (list, tuple)):
        grads, features = [grads], [features]
    total = tf.add_n([tf.reduce_sum(tf.reduce_mean(g, axis=(1, 2), keepdims=True) * f, axis=-1)
                      for g, f in zip(grads, features)])
    return tf.nn.relu(total)


def _cam(grads, features):
    """Grad-CAM of the first batch item."""
    return _cams(grads, features)[0]


def batch_grad_cams(gradcam_model: Any, x: np.ndarray, score_fns: Sequence[Callable[[Any], Any]]
                    ) -> list[np.ndarray]:
    """Grad-CAM for EVERY item of a batch, one (B, h, w) float32 map stack per score function.

    `score_fns[i](outputs)` gives one scalar per item (B,). Items are independent at inference, so
    the gradient of their sum gives each item its own gradient: one forward pass serves the whole
    batch and all targets. Each map is scaled to [0, 1] by its own peak.
    """
    import tensorflow as tf

    xt = tf.convert_to_tensor(x, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        features, outputs = gradcam_model(xt, training=False)
        scores = [tf.reduce_sum(fn(outputs)) for fn in score_fns]
    maps = [_cams(tape.gradient(score, features), features).numpy() for score in scores]
    del tape
    return [np.stack([_unit(m) for m in stack]) if len(stack) else stack.astype(np.float32) for stack in maps]


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
    return _unit(_cam(tape.gradient(score, features), features).numpy())


def grad_cam_class_sum(gradcam_model: Any, x: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM of one class of a segmentation model: the gradient of that class's softmax output summed
    over all pixels, float32 in [0, 1] at feature-map size, for the first item of `x`.

    Compiled once per model on first use (the class index is a tensor argument, so changing the class
    never retraces).
    """
    import tensorflow as tf

    def build() -> Callable:
        @tf.function(reduce_retracing=True)
        def class_sum_cam(x, index):
            with tf.GradientTape() as tape:
                features, outputs = gradcam_model(x, training=False)
                out = outputs["mask"] if isinstance(outputs, dict) else outputs
                score = tf.reduce_sum(tf.gather(out, index, axis=-1), axis=(1, 2))
            return _cam(tape.gradient(score, features), features)

        return class_sum_cam

    fn = _cached(gradcam_model, ("__class_sum__",), build)
    return _unit(fn(tf.convert_to_tensor(x, dtype=tf.float32), tf.constant(int(class_index), dtype=tf.int32)).numpy())


def batch_grad_cam_class_sum(gradcam_model: Any, x: np.ndarray, class_index: int) -> np.ndarray:
    """`grad_cam_class_sum` for every item of a batch (B, h, w), each scaled to its own peak: one compiled pass
    (items are independent at inference, so the gradient of their summed scores is each item's own)."""
    import tensorflow as tf

    def build() -> Callable:
        @tf.function(reduce_retracing=True)
        def class_sum_cams(x, index):
            with tf.GradientTape() as tape:
                features, outputs = gradcam_model(x, training=False)
                out = outputs["mask"] if isinstance(outputs, dict) else outputs
                score = tf.reduce_sum(tf.gather(out, index, axis=-1))
            return _cams(tape.gradient(score, features), features)

        return class_sum_cams

    fn = _cached(gradcam_model, ("__batch_class_sum__",), build)
    maps = fn(tf.convert_to_tensor(x, dtype=tf.float32), tf.constant(int(class_index), dtype=tf.int32)).numpy()
    return np.stack([_unit(m) for m in maps]) if len(maps) else maps.astype(np.float32)


def focus(cam: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Restrict a CAM to a region (same size as `region`), rescaled so its peak inside the region is 1."""
    h, w = region.shape[:2]
    up = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    inside = up * (region > 0)
    return _unit(inside)


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    peak = float(a.max()) if a.size else 0.0
    return a / peak if peak > 1e-12 else np.zeros_like(a)
