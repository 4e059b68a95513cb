"""The phenotype catalogue of a grader: its embeddings and Grad-CAMs of the catalogue knees, filed
under the grade it predicts, clustered by `training.knee.phenotypes.build_catalogue`. Shared by the
shipped model and the phantom proof.
"""
from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np

from imaging.gradcam import batch_grad_cams
from tasks.knee import decide
from training.knee.ensemble import gradcam_layers, severity_basis_of
from training.knee.evaluate import predict_tta
from training.knee.features import FEATURE_TEXT, feature_table
from training.knee.phenotypes import build_catalogue


def cams_batch(model, images_u8: np.ndarray, batch: int = 32) -> np.ndarray:
    """Grad-CAM of the continuous grade ("kl_value") for canonical images, (n, h, w) in [0, 1], by
    imaging.gradcam.batch_grad_cams (every image's score depends on its own features only)."""
    maps = [model.get_layer(name).output for name in gradcam_layers(model)]
    gm = keras.Model(model.inputs, [maps[0] if len(maps) == 1 else maps, model.output["kl_value"]
                                    if isinstance(model.output, dict) else model.output])
    return np.concatenate([batch_grad_cams(gm, images_u8[i:i + batch].astype(np.float32)[..., None] / 255.0,
                                           [lambda v: v[:, 0]])[0]
                           for i in range(0, len(images_u8), batch)]).astype(np.float32)


def make_catalogue(model, images_u8: np.ndarray, head: str, ids=None, meta: dict | None = None,
                   log: Callable[[str], None] = print, min_cluster_sizes=None, pred=None):
    """Embed canonical images with the grader (test-time flip), file each knee under its PREDICTED grade
    (as the app does for a new knee), and build the catalogue (clusters, medoids, mean Grad-CAM,
    descriptions from image measurements). Returns (catalogue, predictions, predicted grades)."""

    t = time.perf_counter()
    pred = pred if pred is not None else predict_tta(model, images_u8)
    grades, _ = decide(pred["kl_value"], pred["kl_coral"], head)
    cams = cams_batch(model, images_u8)
    images01 = images_u8.astype(np.float32) / 255.0
    feats = feature_table(images01)
    cat = build_catalogue(pred["embedding"], grades, images01, cams, feats, severity_basis_of(model), ids,
                          meta=meta, feature_text=FEATURE_TEXT, min_cluster_sizes=min_cluster_sizes)
    for g in cat.meta["grades"]:
        log(f"catalogue KL{g['grade']}: n={g['n']} clusters={g['n_clusters']} noise={g['noise_fraction']:.2f} "
            f"min_cluster_size={g['min_cluster_size']}")
    log(f"catalogue built in {time.perf_counter() - t:.0f} s")
    return cat, pred, grades
