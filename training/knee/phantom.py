"""Knee phantom image sets for the phenotype proof (benchmarks/knee_phenotypes.py): cross-sectional sets
with their hidden phenotypes and a longitudinal cohort, through the task's own preprocessing. No Keras.
"""
from __future__ import annotations

import numpy as np

from tasks.knee import canonical, grader_input
from training.knee.data import CACHE_DIR, KneeSet
from training.phantoms.knee import (GENERATOR_VERSION, PHENOTYPES, SEED_RANGES, VISIT_YEARS, KneeCase,
                                    generate_knee, generate_visit, subject)


PHANTOM_SIZE = 160         # the shipped grader's input size (at 128 px the thin KL 0 traits, such as the
                           # chondrocalcinosis line, fall below a pixel and KL 0 phenotypes blur together)


def to_input(case: KneeCase, size: int = PHANTOM_SIZE) -> np.ndarray:
    """A phantom through the task's own preprocessing, canonical orientation (side known), uint8."""
    x = canonical(grader_input(case.image.astype(np.float32) / 255.0, size), case.side)
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def phantom_set(split: str, n: int, size: int = PHANTOM_SIZE, offset: int = 0, cache: bool = True):
    """(KneeSet, hidden phenotype indices, severities) of n cross-sectional phantoms of a seed range."""
    f = CACHE_DIR / f"phantom_v{GENERATOR_VERSION}_{split}_{offset}_{n}_{size}.npz"
    if cache and f.exists():
        z = np.load(f)
        imgs, grades, sides, phen, sev, seeds = (z[k] for k in ("images", "grades", "sides", "phen", "sev", "seeds"))
    else:
        seeds = np.array(SEED_RANGES[split][offset:offset + n])
        cases = [generate_knee(int(s)) for s in seeds]
        imgs = np.stack([to_input(c, size) for c in cases])
        grades = np.array([c.grade for c in cases])
        sides = np.array([c.side for c in cases])
        phen = np.array([c.phenotype_index for c in cases])
        sev = np.array([c.severity for c in cases])
        if cache:
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            np.savez(f, images=imgs, grades=grades, sides=sides, phen=phen, sev=sev, seeds=seeds)
    ks = KneeSet(split, imgs, grades, sides.astype(str), np.array([f"phantom{s}" for s in seeds]),
                 [f"phantom:{split}:{s}" for s in seeds])
    return ks, phen, sev


def cohort(n_subjects: int, years=VISIT_YEARS, size: int = PHANTOM_SIZE, cache: bool = True):
    """Longitudinal phantoms: images (n, visits, S, S) uint8, true grades (n, visits), phenotype, rate."""
    f = CACHE_DIR / f"phantom_v{GENERATOR_VERSION}_cohort_{n_subjects}_{len(years)}_{size}.npz"
    if cache and f.exists():
        z = np.load(f)
        return {k: z[k] for k in z.files}
    seeds = list(SEED_RANGES["cohort"][:n_subjects])
    imgs = np.empty((n_subjects, len(years), size, size), np.uint8)
    grades = np.empty((n_subjects, len(years)), np.int64)
    sev = np.empty((n_subjects, len(years)))
    for i, s in enumerate(seeds):
        for j, t in enumerate(years):
            c = generate_visit(s, float(t))
            imgs[i, j], grades[i, j], sev[i, j] = to_input(c, size), c.grade, c.severity
    subj = [subject(s) for s in seeds]
    out = {"images": imgs, "grades": grades, "severity": sev, "years": np.array(years, np.float64),
           "phen": np.array([PHENOTYPES.index(u["phenotype"]) for u in subj]),
           "rate": np.array([u["rate"] for u in subj]), "seeds": np.array(seeds)}
    if cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(f, **out)
    return out
