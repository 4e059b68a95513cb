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

from model_loader import ModelUnavailable, sha256_of


def feature_statistics(layer_output: Any) -> Any:
    """(n, d) features from a layer's output: channel mean and std over space for (n, h, w, c) maps, the
    vector itself for (n, d). TensorFlow, so that it runs inside the model's compiled call
    (LoadedModel.call_with_features): serving and fitting compute it the same way."""
    import tensorflow as tf

    maps = tf.convert_to_tensor(layer_output, dtype=tf.float32)
    if maps.shape.rank == 4:
        return tf.concat([tf.reduce_mean(maps, axis=[1, 2]), tf.math.reduce_std(maps, axis=[1, 2])], axis=1)
    return tf.reshape(maps, [tf.shape(maps)[0], -1])


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


def check_of(model: Any) -> tuple[dict[str, Any], FeatureDistribution] | None:
    """The model's declared check and its distribution, or None when its entry declares none. A declared
    check whose file is missing or damaged makes the model unavailable: its answers cannot be trusted."""
    spec = model.entry.ood
    if not spec:
        return None
    try:
        return spec, distribution_for(model.path.parent, spec)
    except OodUnavailable as exc:
        raise ModelUnavailable(model.entry.id, str(exc)) from exc


def run_checked(model: Any, batch: np.ndarray) -> tuple[Any, list[OodVerdict] | None]:
    """The model's outputs for `batch` and a verdict per row (None when the model declares no check),
    the check's layer read from the same compiled call as the outputs."""
    check = check_of(model)
    if check is None:
        return model(batch), None
    spec, distribution = check
    outputs, features = model.call_with_features(batch, spec["layer"], feature_statistics)
    threshold = float(spec["threshold"])
    return outputs, [OodVerdict(float(d), threshold, bool(d > threshold)) for d in distribution.distance(features)]


def withheld_reason(model: Any, outside: OodVerdict, what: str, answer: str) -> str:
    """The sentence a page shows for an answer withheld by the model's check."""
    data = (model.entry.ood or {}).get("data", "its training data")
    return (f"Withheld: this image lies outside the data the {what} was trained on ({data}; distance "
            f"{outside.distance:.1f} against a limit of {outside.threshold:.1f}). The {what} has not been validated "
            f"on images like this one, so it gives no {answer}.")
