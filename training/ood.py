"""Fit a model's training-data check (tasks.ood): the feature distribution and its refusal threshold.

The distribution is fitted on training inputs (mean and Ledoit-Wolf shrunk covariance: the features
outnumber what a plain covariance estimates well from a few thousand inputs); the threshold is the
(1 - false_refusal_rate) quantile of the distances of held-out in-distribution inputs, so about that
share of inputs like the training data is refused. The file goes beside the model and the entry's
`ood` block records it with its checksum.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from tasks.ood import FeatureDistribution
from training.export import register_model, sha256_file

DEFAULT_FALSE_REFUSAL_RATE = 0.01


def fit_distribution(train_features: np.ndarray) -> FeatureDistribution:
    features = np.asarray(train_features, dtype=np.float64).reshape(len(train_features), -1)
    estimate = LedoitWolf().fit(features)
    return FeatureDistribution(estimate.location_, estimate.precision_)


def refusal_threshold(distribution: FeatureDistribution, held_out_features: np.ndarray,
                      false_refusal_rate: float = DEFAULT_FALSE_REFUSAL_RATE) -> float:
    return float(np.quantile(distribution.distance(held_out_features), 1.0 - false_refusal_rate))


def attach(models_dir: Path, entry: dict[str, Any], layer: str, distribution: FeatureDistribution,
           threshold: float, false_refusal_rate: float, fitted_on: str, figures: dict[str, Any],
           command: str) -> dict[str, Any]:
    """Write `<id>.ood.npz` beside the model, record it in the entry (re-registered) and in its card."""
    path = Path(models_dir) / f"{entry['id']}.ood.npz"
    distribution.save(path)
    entry = dict(entry, ood={"method": "mahalanobis", "layer": layer, "file": path.name,
                             "sha256": sha256_file(path), "threshold": round(threshold, 4),
                             "false_refusal_rate": false_refusal_rate, "fitted_on": fitted_on, "figures": figures})
    stored = register_model(models_dir, entry)
    if stored.get("card"):
        write_card_section(Path(models_dir) / stored["card"], CARD_SECTION, card_text(stored["ood"], command))
    return stored


CARD_SECTION = "## Training-data check"


def card_text(spec: dict[str, Any], command: str) -> str:
    """The model card's account of its training-data check, from the registry's `ood` block."""
    figures = spec.get("figures", {})
    kinds = sorted(k[:-len("_refused")] for k in figures if k.endswith("_refused"))
    rows = "\n".join(f"| {k.replace('_', ' ')} | {figures.get('n_' + k, '')} | {100 * figures[k + '_refused']:.1f}% |"
                     for k in kinds)
    return (f"The model answers only for inputs like its training data. The {spec['layer']} layer's channel means and "
            f"standard deviations are compared with their distribution over {spec['fitted_on']} (Mahalanobis "
            f"distance, Ledoit-Wolf covariance); above {spec['threshold']:.2f}, the distance that "
            f"{100 * spec['false_refusal_rate']:.0f}% of {figures.get('threshold_from', 'validation inputs')} exceed, "
            "the answer is withheld and the page says why.\n\n"
            "| inputs | n | refused |\n|---|---|---|\n" + rows + "\n\n"
            f"Regenerate: `{command}`")


def write_card_section(card: Path, heading: str, body: str) -> None:
    """Put `heading` with `body` into the card, replacing an earlier version of that section."""
    text = card.read_text() if card.exists() else ""
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start].rstrip() + ("\n\n" + text[end + 1:] if end >= 0 else "")
    card.write_text(text.rstrip() + f"\n\n{heading}\n\n{body}\n")
