"""The whole sacroiliac run, step by step (the notebook calls the steps; `run` does them all):
check the request and generate the phantoms, train and ship each model, evaluate the shipped files,
register them and write the cards.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from training.export import register_model
from training.sacroiliac.data import PhantomSplits, generate_data, generate_split
from training.sacroiliac.evaluate import (classification_metrics, load_shipped, predict_classes,
                                          predict_masks, segmentation_metrics)
from training.sacroiliac.export import _entry, save_and_reload, write_cards
from training.sacroiliac.model import ALL_MODELS, CLASSIFIER_SPECS, COUNTERPART, PAIRED_SEGMENTER, SEGMENTERS
from training.sacroiliac.train import (FULL_BUDGETS, FULL_SIZES, QUICK_BUDGETS, QUICK_SIZES, Budget,
                                       TrainResult, train_model)
from training.toolbox.runs import COMMITTED_MODELS_DIR, is_committed_models_dir


@dataclass
class NotebookRun:
    """One training run: what to train, where it goes, the data, and what has been done so far."""

    model_ids: list[str]
    out_dir: Path
    quick: bool
    seed: int
    budgets: dict[str, Budget]
    sizes: dict[str, int]
    data: PhantomSplits | None = None
    results: dict[str, TrainResult] = field(default_factory=dict)
    shipped: dict[str, Any] = field(default_factory=dict)       # id -> model reloaded from its shipped file
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # segmenter id -> served masks on data.test


def prepare(model_ids: Sequence[str] = ALL_MODELS, out_dir: str | os.PathLike | None = None, quick: bool = False,
            seed: int = 0, budgets: dict[str, Budget] | None = None, sizes: dict[str, int] | None = None,
            generate: bool = True, log: Callable[[str], None] | None = print) -> NotebookRun:
    """Check the request, pick budgets (quick or full) and generate the phantoms in memory."""
    unknown = [m for m in model_ids if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"unknown model ids: {unknown}; known: {', '.join(ALL_MODELS)}")
    ids = [m for m in ALL_MODELS if m in model_ids]
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="jointscan-sij-") if quick else COMMITTED_MODELS_DIR
    out = Path(out_dir)
    if quick and is_committed_models_dir(out):
        raise ValueError("--quick must not write into the committed models/ directory; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    state = NotebookRun(ids, out, quick, seed, dict(QUICK_BUDGETS if quick else FULL_BUDGETS, **(budgets or {})),
                      dict(QUICK_SIZES if quick else FULL_SIZES, **(sizes or {})))
    if generate:
        state.data = generate_data(max(state.budgets[m].n_train for m in ids), state.sizes["n_val"],
                                     state.sizes["n_test"], log)
    return state


def train_and_save(state: NotebookRun, model_id: str, verbose: int = 2,
                   log: Callable[[str], None] | None = print) -> Path:
    """Train one model, save it for shipping into state.out_dir and keep the reloaded file's model."""
    if log:
        log(f"== training {model_id} ({state.budgets[model_id]})")
    state.results[model_id] = train_model(model_id, state.data, state.budgets[model_id], seed=state.seed,
                                            quick=state.quick, verbose=verbose, log=log)
    path, state.shipped[model_id] = save_and_reload(state.results[model_id], state.out_dir)
    if log:
        log(f"   shipped {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


def _segmenter_for(state: NotebookRun, model_id: str):
    if model_id not in state.shipped:
        found = load_shipped(state.out_dir, model_id)
        if found is not None:
            state.shipped[model_id] = found
    return state.shipped.get(model_id)


def evaluate_shipped(state: NotebookRun, model_id: str, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Held-out test figures of a shipped model, end to end for classifiers (paired segmenter's masks)."""
    test = state.data.test
    t0 = time.perf_counter()
    if model_id in SEGMENTERS:
        state.masks[model_id] = predict_masks(state.shipped[model_id], test)
        metrics = segmentation_metrics(state.masks[model_id], test)
    else:
        seg_id = PAIRED_SEGMENTER[model_id]
        if _segmenter_for(state, seg_id) is None:     # fall back to the other segmenter
            seg_id = COUNTERPART[seg_id]
        seg = _segmenter_for(state, seg_id)
        if seg is not None and seg_id not in state.masks:
            state.masks[seg_id] = predict_masks(seg, test)
        spec = CLASSIFIER_SPECS[model_id]
        preds = predict_classes(state.shipped[model_id], test, spec, state.masks.get(seg_id))
        metrics = {"segmenter": seg_id if seg is not None else None, **classification_metrics(*preds, test)}
        if seg is None:
            metrics["note"] = "no segmenter available: evaluated with empty focus masks (full image)"
        if spec["crop"] == "joint_region":
            gt = classification_metrics(*predict_classes(state.shipped[model_id], test, spec, test.masks), test)
            metrics["stage_macro_f1_gt_mask"] = gt["stage_macro_f1"]
            metrics["as_accuracy_gt_mask"] = gt["as_accuracy"]
    state.metrics[model_id] = metrics
    if log:
        log(f"   evaluated {model_id} on {len(test)} test phantoms in {time.perf_counter() - t0:.0f} s: "
            + json.dumps({k: v for k, v in metrics.items() if not k.endswith("confusion")}))
    return metrics


def register(state: NotebookRun, model_id: str) -> dict[str, Any]:
    """Register a trained, shipped and evaluated model in state.out_dir/registry.json."""
    entry = _entry(model_id, state.results[model_id], state.metrics[model_id], state.data, state.seed,
                   state.quick, state.out_dir)
    return register_model(state.out_dir, entry, model=state.shipped[model_id])


def run(model_ids: Sequence[str] = ALL_MODELS, out_dir: str | os.PathLike | None = None, quick: bool = False,
        seed: int = 0, log: Callable[[str], None] = print, verbose: int = 2,
        budgets: dict[str, Budget] | None = None, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Train `model_ids`, ship them into `out_dir`, evaluate the shipped files, register them, write cards."""
    state = prepare(model_ids, out_dir, quick, seed, budgets, sizes, log=log)
    for mid in state.model_ids:
        train_and_save(state, mid, verbose=verbose, log=log)
    summary: dict[str, Any] = {"out_dir": str(state.out_dir), "models": {}}
    for mid in state.model_ids:
        evaluate_shipped(state, mid, log=log)
        stored = register(state, mid)
        summary["models"][mid] = {"file": str(state.out_dir / stored["file"]), "size_bytes": stored["size_bytes"],
                                  "params": stored["params"], "wall_time_s": stored["training"]["wall_time_s"],
                                  "metrics": stored["metrics"]}
    write_cards(state.out_dir)
    return summary


def reevaluate(model_ids: Sequence[str] = ALL_MODELS, out_dir: str | os.PathLike = COMMITTED_MODELS_DIR,
               n_test: int = FULL_SIZES["n_test"], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate already shipped models again (no training) and refresh their metrics and cards.

    For when the evaluation changes (new figures) but the files do not: each registry entry keeps its
    training record, file and checksum; only `metrics` is replaced.
    """

    out = Path(out_dir)
    entries = {e["id"]: e for e in json.loads((out / "registry.json").read_text())["models"]}
    ids = [m for m in ALL_MODELS if m in model_ids]
    state = NotebookRun(ids, out, False, 0, dict(FULL_BUDGETS), dict(FULL_SIZES, n_test=n_test))
    empty = generate_split("val", 0)
    state.data = PhantomSplits(empty, empty, generate_split("test", n_test, log))
    for mid in ids:
        model = load_shipped(out, mid)
        if model is None:
            raise ValueError(f"{mid} is not registered in {out} or its file does not verify")
        state.shipped[mid] = model
    for mid in ids:
        metrics = evaluate_shipped(state, mid, log=log)
        register_model(out, {**entries[mid], "metrics": metrics}, model=state.shipped[mid])
    write_cards(out)
    return {"out_dir": str(out), "models": {m: {"metrics": state.metrics[m]} for m in ids}}
