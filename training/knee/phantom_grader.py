"""A grader trained on knee phantoms, for the phenotype proof: the same architecture, input size and
training code as the shipped grader, trained on phantom KL grades, never on the hidden phenotype, with
one addition: an auxiliary self-supervised objective (NT-Xent on two augmented views of each knee,
weight CONTRASTIVE), which keeps in the embedding what distinguishes one knee from another rather
than only what sets its grade. As in the app, the graders of several training seeds are combined into
one ensemble (`phantom_model`).

    python -m training.knee.phantom_grader [--n-train 2400] [--epochs 16] [--contrastive 1.0] [--seed 0]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from training.knee.config import WORK_DIR, Config
from training.knee.ensemble import combine, embedding_scales
from training.knee.phantom import PHANTOM_SIZE, phantom_set
from training.knee.train import set_threads, train
from training.phantoms.knee import GENERATOR_VERSION


                           # chondrocalcinosis line, fall below a pixel and KL 0 phenotypes blur together)
CONTRASTIVE = 1.0          # weight of the self-supervised NT-Xent objective beside the grade heads


def phantom_grader_path(seed: int = 0) -> Path:
    """Where the phantom grader of this generator version and training seed is kept."""
    return WORK_DIR / (f"knee-phantom-grader-v{GENERATOR_VERSION}" + (f"-seed{seed}" if seed else "") + ".keras")


def train_phantom_grader(n_train: int = 2400, n_val: int = 400, epochs: int = 16, out: Path | None = None,
                         log: Callable[[str], None] = print, contrastive: float = CONTRASTIVE, seed: int = 0):
    """Train the grader architecture on phantom KL grades (train seeds), select on val seeds; save.
    `seed` seeds the training (initialisation, batch order, augmentation); the phantoms stay the same."""
    t = time.perf_counter()
    tr, _, _ = phantom_set("train", n_train)
    va, _, _ = phantom_set("val", n_val)
    log(f"phantoms: {n_train} train / {n_val} val generated in {time.perf_counter() - t:.0f} s")
    cfg = replace(Config(), size=PHANTOM_SIZE, epochs=epochs, budget_min=None, eval_every=2, contrastive=contrastive,
                  seed=seed)
    model, info = train(cfg, tr, va, log)
    out = out or phantom_grader_path(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return model, info


def load_or_train(retrain: bool = False, log: Callable[[str], None] = print, seed: int = 0, **kw):
    path = phantom_grader_path(seed)
    if path.exists() and not retrain:
        return keras.models.load_model(path, compile=False)
    model, _ = train_phantom_grader(log=log, seed=seed, **kw)
    return model


def phantom_model(seeds, catalogue_images: np.ndarray, retrain: bool = False, log: Callable[[str], None] = print):
    """The phantom grader of one seed, or those of several seeds as one ensemble built the way the shipped
    model is (training.knee.ensemble; embedding scales from the knees the catalogue is built from)."""
    members = [load_or_train(retrain, log=log, seed=s) for s in seeds]
    return members[0] if len(members) == 1 else combine(members, embedding_scales(members, catalogue_images))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.knee.phantom_grader",
                                 description="Train the grader architecture on knee phantoms.")
    ap.add_argument("--n-train", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--contrastive", type=float, default=CONTRASTIVE)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the phantoms stay the same)")
    args = ap.parse_args(argv)
    set_threads()
    train_phantom_grader(args.n_train, epochs=args.epochs, contrastive=args.contrastive, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
