"""Shipping the knee grader: compact file, validation figures of the SHIPPED file, phenotype catalogue,
registry entry and model card. Also the catalogue builder shared with the phantom proof.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tasks.knee import GRADE_NAMES, decide
from training.knee_model import GRADCAM_LAYER

CARD_DATA = ("Chen P., Knee Osteoarthritis Severity Grading Dataset, Mendeley Data 2018, "
             "doi:10.17632/56rmx5bjcr.1, CC BY 4.0 (radiographs from the Osteoarthritis Initiative)")


def severity_basis_of(model) -> np.ndarray:
    """The embedding directions the grade heads read (regression and CORAL kernels), orthonormalised.
    For an ensemble, each member's directions in its own block of the concatenated embedding."""
    from training.knee_ensemble import member_prefixes
    from training.knee_phenotypes import severity_basis

    prefixes = member_prefixes(model)
    dims = [model.get_layer(p + "embedding").units for p in prefixes]
    vectors = []
    for i, p in enumerate(prefixes):
        for layer in ("kl_value_sigmoid", "coral_score"):
            v = np.zeros(sum(dims))
            v[sum(dims[:i]):sum(dims[:i + 1])] = model.get_layer(p + layer).get_weights()[0][:, 0]
            vectors.append(v)
    return severity_basis(vectors)


def to_current_graph(model, cfg):
    """A checkpoint of an earlier graph of the same architecture (the embedding Dense with a built-in ReLU,
    read after it) rebuilt as today's graph (Dense, then a separate ReLU; the embedding read before it),
    weights copied by layer name. The grade heads compute exactly the same function."""
    try:
        model.get_layer("embedding_relu")
        return model
    except ValueError:
        pass
    from training import knee as K

    new = K.build(cfg)
    for layer in new.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new


def cams_batch(model, images_u8: np.ndarray, batch: int = 32) -> np.ndarray:
    """Grad-CAM of the continuous grade ("kl_value") for canonical images, (n, h, w) in [0, 1], by
    imaging.gradcam.batch_grad_cams (every image's score depends on its own features only)."""
    import keras

    from imaging.gradcam import batch_grad_cams

    from training.knee_ensemble import gradcam_layers

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
    from training.knee import predict_tta
    from training.knee_features import FEATURE_TEXT, feature_table
    from training.knee_phenotypes import build_catalogue

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


def ship(ckpts: list[Path], cfg, train_set, val_set, out: Path, infos: list[dict[str, Any]], source: str,
         command: str, log: Callable[[str], None], quick: bool = False) -> dict[str, Any]:
    """Ship one trained grader, or several as one ensemble file (training.knee_ensemble), with its
    validation figures, catalogue, registry entry and card. infos[i]: member i's train_info.json."""
    import keras

    from training import knee as K
    from training.knee_ensemble import combine, embedding_scales, gradcam_layers
    from training.export import register_model, save_for_shipping, write_model_card
    from training.knee_phenotypes import save_catalogue

    out.mkdir(parents=True, exist_ok=True)
    graders = [to_current_graph(keras.models.load_model(c, compile=False), cfg) for c in ckpts]
    if len(graders) == 1:
        model = graders[0]
    else:   # the scales come from the knees the catalogue is built from
        model = combine(graders, embedding_scales(graders, train_set.images))
        log(f"ensemble of {len(graders)} graders")
    fname = f"{K.MODEL_ID}.keras"
    save_for_shipping(model, out / fname)
    shipped = keras.models.load_model(out / fname, compile=False)      # published figures: what ships
    pred_val = K.predict_tta(shipped, val_set.images)
    figs = K.figures(val_set.grades, pred_val)
    head = K.best_head(figs)
    side_acc = float((pred_val["canon_ok"] > 0.5).mean())
    log(f"shipped file on val: {json.dumps({h: {k: figs[h][k] for k in ('accuracy', 'qwk', 'mae')} for h in figs})}; "
        f"decision head {head}; side detection {side_acc:.4f}")
    cat, _, _ = make_catalogue(shipped, train_set.images, head, ids=list(train_set.ids),
                               meta={"model_id": K.MODEL_ID, "built_from": f"{len(train_set)} {train_set.split} knees "
                                     f"({source}), filed under the grade the model predicts"}, log=log)
    jpath, npath = save_catalogue(cat, out / fname)
    cam_layers = gradcam_layers(shipped)               # one per member of an ensemble
    from training.export import sha256_file

    entry = {
        "id": K.MODEL_ID, "task": K.TASK, "role": "grader", "version": K.VERSION,
        "title": "Knee KL grader with phenotypes (compact residual CNN)" + (" [quick]" if quick else ""),
        "architecture": ((f"Ensemble of {len(graders)} graders (outputs averaged, embeddings side by side), each: "
                          if len(graders) > 1 else "") +
                         f"Residual CNN from scratch: stem 3x3/2, stages {list(cfg.widths)} with {list(cfg.blocks)} "
                         f"residual blocks (BN+ReLU), last stage at 1/16 ('{GRADCAM_LAYER}'), compartment pooling "
                         f"(image-left/right halves), Dense {cfg.embedding_dim} embedding; heads: regression "
                         "(sigmoid x 4, MSE), CORAL (4 rank-consistent thresholds), orientation (mirrored)"),
        "reference": False, "default": True, "file": fname,
        "input": {"shape": [cfg.size, cfg.size, 1], "channels": ["image"], "crop": "full",
                  "orientation": "canonical left knee (medial on the image left); right knees mirrored",
                  "decision_head": head, "catalogue": {"json": jpath.name, "npz": npath.name,
                                                        "json_sha256": sha256_file(jpath),
                                                        "npz_sha256": sha256_file(npath)}},
        "outputs": ["kl_value", "kl_coral", "mirrored", "embedding"],
        "gradcam_layer": cam_layers[0] if len(cam_layers) == 1 else cam_layers,
        "training": {"data": source, "split": "official train split for training, val split for model "
                     "selection and the figures (no test split here)", "command": command,
                     "members": [{"seed": i["config"]["seed"], "size": i["config"]["size"],
                                  "epochs": i.get("epochs_run"), "best_epoch": i.get("best_epoch"),
                                  "wall_time_s": i.get("wall_time_s"),
                                  "budget": (f"{i['config']['budget_min']:g} min wall clock" if i["config"].get("budget_min")
                                             else f"{i['config']['epochs']} epochs"),
                                  **({"first_stage": i["initialised_from"]} if i.get("initialised_from") else {})}
                                 for i in infos]},
        "metrics": {"val": {"decision_head": head, **{h: {k: figs[h][k] for k in ("accuracy", "qwk", "mae", "recall")}
                                                      for h in figs}, "side_detection_accuracy": round(side_acc, 4),
                            "n": int(len(val_set))}},
        "description": ("Kellgren-Lawrence grade 0-4 of a knee radiograph crop centred on the tibiofemoral joint "
                        "(AP/PA, like the OAI crops), with the continuous grade, per-grade probabilities, the side, "
                        "a Grad-CAM, and the knee's phenotype within its grade from the stored catalogue."),
    }
    entry = register_model(out, entry, model=shipped)
    write_model_card(out, entry, _card_sections(figs, head, side_acc, cat, cfg, infos, source))
    log(f"registered {K.MODEL_ID} in {out / 'registry.json'}")
    return entry


def _first_stage(init: dict[str, Any] | None) -> str:
    """Card wording for a fine-tuned run: what its first stage was (progressive resizing)."""
    if not init:
        return ""
    c = init["config"]
    return (f"Two stages (progressive resizing): first {init.get('epochs_run')} epochs at {c['size']} px "
            f"({(init.get('wall_time_s') or 0) / 60:.0f} min, AdamW lr {c['lr']}, best val QWK at epoch "
            f"{init.get('best_epoch')}), then its weights fine-tuned at the full resolution: ")


def _member_text(info: dict[str, Any]) -> str:
    c = info["config"]
    return (_first_stage(info.get("initialised_from")) +
            f"{info.get('epochs_run')} epochs at {c['size']} px ({(info.get('wall_time_s') or 0) / 60:.0f} min on a shared "
            f"2-core CPU, AdamW lr {c['lr']}), best val QWK at epoch {info.get('best_epoch')}")


def _training_text(cfg, infos: list[dict[str, Any]]) -> str:
    common = (f"Batch {cfg.batch_size}, AdamW with warm-up and cosine decay, light augmentation (rotation, scale, "
              "shift, gamma, contrast, brightness, mirror flips as the orientation target); both grade heads "
              "trained together on one trunk; test-time flip averaging.")
    if len(infos) == 1:
        return _member_text(infos[0]) + ". " + common
    members = "\n".join(f"- Member {i + 1} (training seed {info['config']['seed']}): {_member_text(info)}."
                        for i, info in enumerate(infos))
    return (f"An ensemble of {len(infos)} graders of the same architecture, trained independently (different "
            "seeds: initialisation, batch order, augmentation); their outputs are averaged and their embeddings "
            "set side by side for the phenotypes (each scaled to the same spread over the training knees), "
            "because one grader's embedding depends on its seed (see training/knee_ensemble.py).\n\n"
            f"{members}\n\n{common}")


def _card_sections(figs, head, side_acc, cat, cfg, infos, source) -> dict[str, str]:
    from training.export import metrics_table

    rows = {h + (" (kept)" if h == head else ""): {"accuracy": figs[h]["accuracy"], "QWK": figs[h]["qwk"],
                                                   "MAE": figs[h]["mae"]} for h in figs}
    rows["published, ImageNet-pretrained (about)"] = {"accuracy": 0.70, "QWK": 0.88, "MAE": ""}
    rows["original design (regression)"] = {"accuracy": "", "QWK": "", "MAE": 0.87}
    rows["calibration: 2.8 M residual CNN, 128 px, 14 ep"] = {"accuracy": 0.493, "QWK": 0.72, "MAE": 0.62}
    cm = figs[head]["confusion_matrix"]
    cm_md = "| true \\ predicted | " + " | ".join(GRADE_NAMES) + " |\n|---|" + "---|" * len(GRADE_NAMES) + "\n"
    cm_md += "\n".join(f"| {GRADE_NAMES[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(cm))
    recall = ", ".join(f"{k} {v:.2f}" for k, v in figs[head]["recall"].items() if v is not None)
    cat_lines = []
    for g in cat.meta["grades"]:
        names = ", ".join(f"{c['name']} ({c['size']})" for c in g["clusters"]) or "none"
        cat_lines.append(f"- KL {g['grade']}: {g['n']} knees, clusters {names}, noise {g['noise_fraction']:.0%}")
    return {
        "Training data": (f"{source}. Official train split (5,778 knees) for training; val split (826 knees, "
                          f"patient-disjoint) for model selection and every figure below. No test split exists "
                          f"here, so these are validation figures. Data: {CARD_DATA}. Medoid thumbnails in the "
                          "catalogue are 64-pixel downscaled crops of training radiographs under the same licence."),
        "Training": _training_text(cfg, infos),
        "Metrics on held-out data": (metrics_table(rows) + f"\n\nDecision head kept (highest val QWK): **{head}**. "
                                     f"Per-grade recall: {recall}. Side (orientation) detection on val: "
                                     f"{side_acc:.1%}.\n\nConfusion matrix (val):\n\n{cm_md}"),
        "Phenotype catalogue": ("Clusters of the training knees' embeddings within each predicted grade "
                                "(HDBSCAN, see training/knee_phenotypes.py):\n\n" + "\n".join(cat_lines) +
                                "\n\nThe method is proven on knee phantoms with hidden phenotypes "
                                "(benchmarks/knee_phenotypes.py); on real knees the clusters are descriptive only, "
                                "not validated phenotypes."),
        "Known failure modes and limits": (
            "Trained from scratch on 5,778 crops on a CPU budget: well below published accuracy; KL 1 is "
            "the hardest grade (doubtful changes) and is often read as 0 or 2. Expects a crop centred on the "
            "tibiofemoral joint like the OAI crops (about 224 px across the joint); a whole-leg or lateral "
            "radiograph, a child's knee, implants or casts are outside what it has seen. The side is detected "
            "from the image unless given; a wrong side swaps medial and lateral in the phenotype description. "
            "Phenotype clusters on real data are unsupervised groupings, not established disease subtypes."),
    }
