"""Shipping the knee grader, alone or as an ensemble: the compact file, validation figures of the SHIPPED
file, the phenotype catalogue, the registry entry with the commands that regenerate it, the card.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import keras

from tasks.knee import GRADE_NAMES
from training.export import metrics_table, register_model, save_for_shipping, sha256_file, write_model_card
from training.knee.catalogue import make_catalogue
from training.knee.config import MODEL_ID, TASK, VERSION, Config
from training.knee.ensemble import combine, embedding_scales, gradcam_layers
from training.knee.evaluate import best_head, figures, predict_tta
from training.knee.model import GRADCAM_LAYER, build
from training.knee.phenotypes import save_catalogue


CARD_DATA = ("Chen P., Knee Osteoarthritis Severity Grading Dataset, Mendeley Data 2018, "
             "doi:10.17632/56rmx5bjcr.1, CC BY 4.0 (radiographs from the Osteoarthritis Initiative)")


def to_current_graph(model, cfg):
    """A checkpoint of an earlier graph of the same architecture (the embedding Dense with a built-in ReLU,
    read after it) rebuilt as today's graph (Dense, then a separate ReLU; the embedding read before it),
    weights copied by layer name. The grade heads compute exactly the same function."""
    try:
        model.get_layer("embedding_relu")
        return model
    except ValueError:
        pass
    new = build(cfg)
    for layer in new.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new


def export_grader(ckpts: list[Path], cfg, train_set, val_set, out: Path, infos: list[dict[str, Any]], source: str,
         command: str, log: Callable[[str], None], quick: bool = False) -> dict[str, Any]:
    """Ship one trained grader, or several as one ensemble file (training.knee.ensemble), with its
    validation figures, catalogue, registry entry and card. infos[i]: member i's train_info.json."""


    out.mkdir(parents=True, exist_ok=True)
    graders = [to_current_graph(keras.models.load_model(c, compile=False), cfg) for c in ckpts]
    if len(graders) == 1:
        model = graders[0]
    else:   # the scales come from the knees the catalogue is built from
        model = combine(graders, embedding_scales(graders, train_set.images))
        log(f"ensemble of {len(graders)} graders")
    fname = f"{MODEL_ID}.keras"
    save_for_shipping(model, out / fname)
    shipped = keras.models.load_model(out / fname, compile=False)      # published figures: what ships
    pred_val = predict_tta(shipped, val_set.images)
    figs = figures(val_set.grades, pred_val)
    head = best_head(figs)
    side_acc = float((pred_val["canon_ok"] > 0.5).mean())
    log(f"shipped file on val: {json.dumps({h: {k: figs[h][k] for k in ('accuracy', 'qwk', 'mae')} for h in figs})}; "
        f"decision head {head}; side detection {side_acc:.4f}")
    cat, _, _ = make_catalogue(shipped, train_set.images, head, ids=list(train_set.ids),
                               meta={"model_id": MODEL_ID, "built_from": f"{len(train_set)} {train_set.split} knees "
                                     f"({source}), filed under the grade the model predicts"}, log=log)
    jpath, npath = save_catalogue(cat, out / fname)
    cam_layers = gradcam_layers(shipped)               # one per member of an ensemble

    entry = {
        "id": MODEL_ID, "task": TASK, "role": "grader", "version": VERSION,
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
    log(f"registered {MODEL_ID} in {out / 'registry.json'}")
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
            "because one grader's embedding depends on its seed (see training/knee/ensemble.py).\n\n"
            f"{members}\n\n{common}")


def _card_sections(figs, head, side_acc, cat, cfg, infos, source) -> dict[str, str]:
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
                                "(HDBSCAN, see training/knee/phenotypes.py):\n\n" + "\n".join(cat_lines) +
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


def _train_command(c: dict[str, Any], quick: bool) -> str:
    """The training command of one run from its recorded config (a Config's fields)."""
    return ("python -m training.knee " + ("--quick " if quick else "") + f"--size {c['size']} "
            + (f"--epochs {c['epochs']}" if c.get("epochs") else f"--budget-min {c['budget_min']:g}")
            + (f" --lr {c['lr']:g}" if c.get("lr", Config.lr) != Config.lr else "")
            + (f" --init {c['init']}" if c.get("init") else "") + f" --seed {c['seed']}")


def _stages(c: dict[str, Any], init_info: dict[str, Any] | None, quick: bool) -> list[str]:
    """A fine-tuned run is preceded by its first stage's command (training into the --init folder)."""
    if c.get("init") and init_info:
        return [_train_command(init_info["config"], quick) + f" --stage train --work {Path(c['init']).parent}"]
    return []


def command_line(args, cfg: Config, init_info: dict[str, Any] | None = None) -> str:
    """The command(s) that regenerate the shipped file of a single run."""
    c = cfg.__dict__
    return " && ".join(_stages(c, init_info, args.quick)
                       + [_train_command(c, args.quick) + f" --out {args.out or 'models'}"])


def ensemble_command_line(args, infos: list[dict[str, Any]], works: list[str]) -> str:
    """The commands that regenerate an ensemble: each member's training (both stages), then the ship."""
    cmds = []
    for info, work in zip(infos, works):
        cmds += _stages(info["config"], info.get("initialised_from"), args.quick)
        cmds.append(_train_command(info["config"], args.quick) + f" --stage train --work {work}")
    cmds.append("python -m training.knee " + ("--quick " if args.quick else "")
                + f"--stage export --members {' '.join(works)} --out {args.out or 'models'}")
    return " && ".join(cmds)
