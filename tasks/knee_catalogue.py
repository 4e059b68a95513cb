"""Knee phenotype catalogue, serving side: load the catalogue stored beside a grader and assign a
new knee to a phenotype of its grade (or to none). NumPy only; fitting a catalogue is training's
job (`training.knee.phenotypes`, where the method is described).

Assignment of a new knee x to grade g's clusters (an approximate_predict-style rule; scikit-learn's
HDBSCAN has none): project x as the catalogue was fitted (severity directions removed, centred on
the grade, unit length, principal components), compute its core distance to the grade's points, and
the mutual reachability distance to every point j, mrd(x, j) = max(core(x), core(j), d(x, j)). The
nearest point in that distance decides: if it is noise, x is noise. Otherwise x joins its cluster c,
unless mrd exceeds the cluster's reach tau_c (the largest of its members' nearest-member mutual
reachability), in which case x lies outside every dense region and is noise too. Membership strength
= min(1, median link of c / mrd): 1 inside the cluster's core, falling towards tau_c at its edge
(HDBSCAN's own probabilities are the same kind of ratio of densities, lambda = 1 / distance).

Files: <model>.catalogue.json (metadata) + <model>.catalogue.npz (arrays) beside the model file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CATALOGUE_VERSION = 1
CLUSTER_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class GradeClusters:
    grade: int
    mean: np.ndarray                 # (d,) centre of the grade's embeddings (severity directions removed)
    shift: np.ndarray                # (k,) centre of the unit-length vectors, in component coordinates
    components: np.ndarray           # (k, d) principal directions of the unit-length vectors
    points: np.ndarray               # (n, k) reduced embeddings of the grade's knees
    labels: np.ndarray               # (n,) cluster index, -1 noise
    core: np.ndarray                 # (n,) core distances
    min_samples: int
    min_cluster_size: int
    reach: np.ndarray = field(default_factory=lambda: np.zeros(0))    # (n_clusters,) tau_c
    link: np.ndarray = field(default_factory=lambda: np.zeros(0))     # (n_clusters,) median link
    tuning: list = field(default_factory=list)                        # candidate scores

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size and self.labels.max() >= 0 else 0


@dataclass
class Assignment:
    grade: int
    cluster: int                     # -1: noise ("no phenotype")
    strength: float                  # 0..1 (0 for noise)
    mrd: float                       # mutual reachability distance to the nearest point
    reach: float | None              # the cluster's reach tau_c (None when the nearest point is noise)
    nearest_label: int               # cluster of the nearest point (-1 noise)


def remove_directions(E: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    E = np.asarray(E, np.float64)
    if basis is None or basis.size == 0:
        return E
    return E - (E @ basis) @ basis.T


def unit_rows(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def reduce(E: np.ndarray, gc: GradeClusters, basis: np.ndarray | None) -> np.ndarray:
    U = unit_rows(remove_directions(E, basis) - gc.mean)
    return U @ gc.components.T - gc.shift


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def core_distances(P: np.ndarray, k: int, queries: np.ndarray | None = None) -> np.ndarray:
    """k-th nearest-neighbour distance of each training point (itself excluded) or of each query."""
    if queries is None:
        D = pairwise_distances(P, P)
        np.fill_diagonal(D, np.inf)
    else:
        D = pairwise_distances(np.atleast_2d(queries), P)
    k = int(min(k, D.shape[1] - (1 if queries is None else 0)))
    return np.partition(D, k - 1, axis=1)[:, k - 1]


def assign_points(Q: np.ndarray, gc: GradeClusters) -> list[Assignment]:
    """Assign reduced points Q (m, k) of grade gc.grade (see the module docstring)."""
    Q = np.atleast_2d(np.asarray(Q, np.float64))
    if gc.points.shape[0] == 0:
        return [Assignment(gc.grade, -1, 0.0, float("inf"), None, -1) for _ in Q]
    D = pairwise_distances(Q, gc.points)
    k = int(min(gc.min_samples, gc.points.shape[0]))
    core_q = np.partition(D, k - 1, axis=1)[:, k - 1]
    mrd = np.maximum(D, np.maximum(core_q[:, None], gc.core[None, :]))
    out = []
    for i in range(len(Q)):
        j = int(np.argmin(mrd[i]))
        m, lab = float(mrd[i, j]), int(gc.labels[j])
        if lab < 0:
            out.append(Assignment(gc.grade, -1, 0.0, m, None, -1))
            continue
        tau = float(gc.reach[lab])
        if m > tau:
            out.append(Assignment(gc.grade, -1, 0.0, m, tau, lab))
            continue
        strength = 1.0 if m <= 0 else float(min(1.0, gc.link[lab] / m))
        out.append(Assignment(gc.grade, lab, round(strength, 4), m, tau, lab))
    return out


@dataclass
class Catalogue:
    meta: dict[str, Any]                         # JSON part: per grade and cluster sizes, descriptions ...
    basis: np.ndarray | None
    grades: dict[int, GradeClusters]
    images: dict[str, np.ndarray]                # "g2_c0_medoids" (m, T, T), "g2_c0_cam", "g2_c0_mean", "g2_mean"

    def grade_meta(self, grade: int) -> dict[str, Any] | None:
        return next((g for g in self.meta.get("grades", []) if g["grade"] == grade), None)

    def cluster_meta(self, grade: int, cluster: int) -> dict[str, Any] | None:
        gm = self.grade_meta(grade)
        if gm is None:
            return None
        return next((c for c in gm["clusters"] if c["index"] == cluster), None)

    def assign(self, embedding: np.ndarray, grade: int) -> Assignment:
        gc = self.grades.get(int(grade))
        if gc is None:
            return Assignment(int(grade), -1, 0.0, float("inf"), None, -1)
        return assign_points(reduce(np.atleast_2d(embedding), gc, self.basis), gc)[0]

    def assign_many(self, E: np.ndarray, grades: np.ndarray) -> list[Assignment]:
        out: list[Assignment | None] = [None] * len(grades)
        for g in np.unique(grades):
            idx = np.flatnonzero(grades == g)
            gc = self.grades.get(int(g))
            if gc is None:
                for i in idx:
                    out[i] = Assignment(int(g), -1, 0.0, float("inf"), None, -1)
                continue
            for i, a in zip(idx, assign_points(reduce(E[idx], gc, self.basis), gc)):
                out[i] = a
        return out  # type: ignore[return-value]


def cluster_name(grade: int, cluster: int) -> str:
    return f"KL{grade}-{CLUSTER_LETTERS[cluster % len(CLUSTER_LETTERS)]}"


def catalogue_paths(model_path: str | Path) -> tuple[Path, Path]:
    p = Path(model_path)
    stem = p.name[: -len(".keras")] if p.name.endswith(".keras") else p.stem
    return p.with_name(f"{stem}.catalogue.json"), p.with_name(f"{stem}.catalogue.npz")


def load_catalogue(model_path: str | Path) -> Catalogue:
    """Read the catalogue stored beside a model file; raises FileNotFoundError when it is absent."""
    jpath, npath = catalogue_paths(model_path)
    meta = json.loads(jpath.read_text())
    with np.load(npath, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    basis = arrays.get("basis")
    basis = basis.astype(np.float64) if basis is not None else None
    grades: dict[int, GradeClusters] = {}
    for g_str, p in meta.get("params", {}).items():
        g = int(g_str)
        grades[g] = GradeClusters(
            g, arrays[f"g{g}_mean_vec"].astype(np.float64), arrays[f"g{g}_shift"].astype(np.float64),
            arrays[f"g{g}_components"].astype(np.float64), arrays[f"g{g}_points"].astype(np.float64),
            arrays[f"g{g}_labels"].astype(np.int64), arrays[f"g{g}_core"].astype(np.float64),
            int(p["min_samples"]), int(p["min_cluster_size"]), arrays[f"g{g}_reach"].astype(np.float64),
            arrays[f"g{g}_link"].astype(np.float64))
    images = {k[4:]: v for k, v in arrays.items() if k.startswith("img_")}
    return Catalogue(meta, basis, grades, images)
