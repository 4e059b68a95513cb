"""Is an input inside a model's training data? A Mahalanobis distance in the model's own feature space.

A model's registry entry may carry an `ood` block:

    {"method": "mahalanobis", "layer": "block2_relu2", "file": "<id>.ood.npz", "sha256": "...",
     "threshold": 41.2, "false_refusal_rate": 0.01, "fitted_on": "...", "figures": {...}}

The features of a convolutional layer are its channels' spatial mean and standard deviation (the
layer's texture statistics); an early layer is the one to read: a classifier's last layers map
anything onto its classes, so an unfamiliar image can land right among the training data there,
while the statistics of its early filters differ from the training images' at once (measured by
training/sacroiliac/ood.py). The file holds the mean and the precision (inverse shrunk covariance,
Ledoit-Wolf) of those features over the training inputs; the threshold is the distance that the stated share of held-out
in-distribution inputs exceeds. An input farther than the threshold is outside the data the model
learned from, and the task withholds that model's answer, saying why. Distances are reported as the
square root of the Mahalanobis form, in units of the training spread.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_loader import sha256_of


def feature_statistics(layer_output: np.ndarray) -> np.ndarray:
    """(n, d) features from a layer's output: channel mean and std over space for (n, h, w, c) maps."""
    out = np.asarray(layer_output, dtype=np.float64)
    if out.ndim == 4:
        return np.concatenate([out.mean(axis=(1, 2)), out.std(axis=(1, 2))], axis=1)
    return out.reshape(len(out), -1)


@dataclass(frozen=True)
class FeatureDistribution:
    mean: np.ndarray          # (d,)
    precision: np.ndarray     # (d, d)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `features` (n, d) to the training distribution."""
        centred = np.asarray(features, dtype=np.float64).reshape(len(features), -1) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, self.precision, centred), 0.0))

    def save(self, path: Path) -> None:
        with path.open("wb") as fh:
            np.savez(fh, mean=self.mean, precision=self.precision)

    @classmethod
    def load(cls, path: Path) -> "FeatureDistribution":
        with np.load(path, allow_pickle=False) as data:
            return cls(np.asarray(data["mean"], np.float64), np.asarray(data["precision"], np.float64))


@dataclass(frozen=True)
class OodVerdict:
    distance: float
    threshold: float
    outside: bool

    def as_dict(self) -> dict[str, Any]:
        return {"distance": round(self.distance, 2), "threshold": round(self.threshold, 2), "outside": self.outside}


class OodUnavailable(RuntimeError):
    """The model declares an ood check whose file is missing or damaged: its answers cannot be trusted."""


_CACHE: dict[tuple[str, str], FeatureDistribution] = {}
_LOCK = threading.Lock()


def distribution_for(models_dir: Path, spec: dict[str, Any]) -> FeatureDistribution:
    """The declared distribution, checked against its recorded checksum and cached per process."""
    path = Path(models_dir) / spec["file"]
    key = (str(path), spec.get("sha256", ""))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if not path.is_file():
            raise OodUnavailable(f"the model's training-data check ({spec['file']}) is missing")
        if spec.get("sha256") and sha256_of(path) != spec["sha256"]:
            raise OodUnavailable(f"the model's training-data check ({spec['file']}) is damaged or was replaced")
        _CACHE[key] = FeatureDistribution.load(path)
        return _CACHE[key]


def verdict(distribution: FeatureDistribution, layer_output: np.ndarray, threshold: float) -> OodVerdict:
    """The verdict for one input, from the declared layer's output for it (a batch of one)."""
    d = float(distribution.distance(feature_statistics(layer_output)[:1])[0])
    return OodVerdict(d, float(threshold), bool(d > threshold))
