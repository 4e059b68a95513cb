"""The phantom side of the knee task: phantom image sets and a grader trained on knee phantoms.

The phenotype method is proven on phantoms (benchmarks/knee_phenotypes.py) because real phenotypes
cannot be checked. The embedding there comes from a grader of the SAME architecture, input size and training code
(training.knee.train, training.knee_model.knee_grader) trained on phantom KL grades, never on the hidden
phenotype, with one addition: an auxiliary self-supervised objective (NT-Xent on two augmented views of
each knee, weight CONTRASTIVE), which keeps in the embedding what distinguishes one knee from another
rather than only what sets its grade. The clustering, catalogue and assignment are the app's own code
(training.knee_phenotypes via training.knee_ship.make_catalogue), and, as in the app, the graders of
several training seeds are combined into one ensemble (`phantom_model`, training.knee_ensemble).

    python -m training.knee_phantom [--n-train 2400] [--epochs 16] [--contrastive 1.0] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from tasks.knee import canonical, grader_input
from training.knee_data import KneeSet
from training.phantoms import knee as P

PHANTOM_SIZE = 160         # the shipped grader's input size (at 128 px the thin KL 0 traits, such as the
                           # chondrocalcinosis line, fall below a pixel and KL 0 phenotypes blur together)
CACHE = Path(os.environ.get("JOINTSCAN_KNEE_CACHE", "/tmp/jointscan_knee_cache"))
WORK = Path(os.environ.get("JOINTSCAN_KNEE_WORK", "/tmp/jointscan_knee_work"))
CONTRASTIVE = 1.0          # weight of the self-supervised NT-Xent objective beside the grade heads


def phantom_grader_path(seed: int = 0) -> Path:
    """Where the phantom grader of this generator version and training seed is kept."""
    return WORK / (f"knee-phantom-grader-v{P.GENERATOR_VERSION}" + (f"-seed{seed}" if seed else "") + ".keras")


def to_input(case: P.KneeCase, size: int = PHANTOM_SIZE) -> np.ndarray:
    """A phantom through the task's own preprocessing, canonical orientation (side known), uint8."""
    x = canonical(grader_input(case.image.astype(np.float32) / 255.0, size), case.side)
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def phantom_set(split: str, n: int, size: int = PHANTOM_SIZE, offset: int = 0, cache: bool = True):
    """(KneeSet, hidden phenotype indices, severities) of n cross-sectional phantoms of a seed range."""
    f = CACHE / f"phantom_v{P.GENERATOR_VERSION}_{split}_{offset}_{n}_{size}.npz"
    if cache and f.exists():
        z = np.load(f)
        imgs, grades, sides, phen, sev, seeds = (z[k] for k in ("images", "grades", "sides", "phen", "sev", "seeds"))
    else:
        seeds = np.array(P.SEED_RANGES[split][offset:offset + n])
        cases = [P.generate_knee(int(s)) for s in seeds]
        imgs = np.stack([to_input(c, size) for c in cases])
        grades = np.array([c.grade for c in cases])
        sides = np.array([c.side for c in cases])
        phen = np.array([c.phenotype_index for c in cases])
        sev = np.array([c.severity for c in cases])
        if cache:
            CACHE.mkdir(parents=True, exist_ok=True)
            np.savez(f, images=imgs, grades=grades, sides=sides, phen=phen, sev=sev, seeds=seeds)
    ks = KneeSet(split, imgs, grades, sides.astype(str), np.array([f"phantom{s}" for s in seeds]),
                 [f"phantom:{split}:{s}" for s in seeds])
    return ks, phen, sev


def cohort(n_subjects: int, years=P.VISIT_YEARS, size: int = PHANTOM_SIZE, cache: bool = True):
    """Longitudinal phantoms: images (n, visits, S, S) uint8, true grades (n, visits), phenotype, rate."""
    f = CACHE / f"phantom_v{P.GENERATOR_VERSION}_cohort_{n_subjects}_{len(years)}_{size}.npz"
    if cache and f.exists():
        z = np.load(f)
        return {k: z[k] for k in z.files}
    seeds = list(P.SEED_RANGES["cohort"][:n_subjects])
    imgs = np.empty((n_subjects, len(years), size, size), np.uint8)
    grades = np.empty((n_subjects, len(years)), np.int64)
    sev = np.empty((n_subjects, len(years)))
    for i, s in enumerate(seeds):
        for j, t in enumerate(years):
            c = P.generate_visit(s, float(t))
            imgs[i, j], grades[i, j], sev[i, j] = to_input(c, size), c.grade, c.severity
    subj = [P.subject(s) for s in seeds]
    out = {"images": imgs, "grades": grades, "severity": sev, "years": np.array(years, np.float64),
           "phen": np.array([P.PHENOTYPES.index(u["phenotype"]) for u in subj]),
           "rate": np.array([u["rate"] for u in subj]), "seeds": np.array(seeds)}
    if cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(f, **out)
    return out


def train_phantom_grader(n_train: int = 2400, n_val: int = 400, epochs: int = 16, out: Path | None = None,
                         log: Callable[[str], None] = print, contrastive: float = CONTRASTIVE, seed: int = 0):
    """Train the grader architecture on phantom KL grades (train seeds), select on val seeds; save.
    `seed` seeds the training (initialisation, batch order, augmentation); the phantoms stay the same."""
    from training import knee as K

    t = time.perf_counter()
    tr, _, _ = phantom_set("train", n_train)
    va, _, _ = phantom_set("val", n_val)
    log(f"phantoms: {n_train} train / {n_val} val generated in {time.perf_counter() - t:.0f} s")
    cfg = replace(K.Config(), size=PHANTOM_SIZE, epochs=epochs, budget_min=None, eval_every=2, contrastive=contrastive,
                  seed=seed)
    model, info = K.train(cfg, tr, va, log)
    out = out or phantom_grader_path(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return model, info


def load_or_train(retrain: bool = False, log: Callable[[str], None] = print, seed: int = 0, **kw):
    import keras

    path = phantom_grader_path(seed)
    if path.exists() and not retrain:
        return keras.models.load_model(path, compile=False)
    model, _ = train_phantom_grader(log=log, seed=seed, **kw)
    return model


def phantom_model(seeds, catalogue_images: np.ndarray, retrain: bool = False, log: Callable[[str], None] = print):
    """The phantom grader of one seed, or those of several seeds as one ensemble built the way the shipped
    model is (training.knee_ensemble; embedding scales from the knees the catalogue is built from)."""
    from training.knee_ensemble import combine, embedding_scales

    members = [load_or_train(retrain, log=log, seed=s) for s in seeds]
    return members[0] if len(members) == 1 else combine(members, embedding_scales(members, catalogue_images))


def main(argv=None) -> int:
    from training.knee import set_threads

    ap = argparse.ArgumentParser(description="Train the grader architecture on knee phantoms.")
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
