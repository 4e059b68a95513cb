"""Training one sacroiliac model under its budget (epochs, batch, learning rate, early stopping)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np

from training.sacroiliac.data import (ClassifierBatches, PhantomSplits, _repeating_dataset,
                                      classifier_arrays, classifier_targets, segmentation_arrays)
from training.sacroiliac.model import ALL_MODELS, CLASSIFIER_SPECS, SEGMENTERS, build, dice_bce_loss
from training.toolbox.schedule import adam_cosine


@dataclass(frozen=True)
class Budget:
    n_train: int           # training phantoms (first n of SEED_RANGES["train"])
    epochs: int
    batch_size: int
    lr: float
    patience: int = 3      # early stopping on validation loss (best weights restored)
    steps_per_epoch: int | None = None   # None: one pass over n_train per epoch


FULL_BUDGETS = {
    "sij-attention-unet": Budget(n_train=4000, epochs=3, batch_size=16, lr=3e-3),
    "sij-unet-ref": Budget(n_train=6000, epochs=2, batch_size=8, lr=3e-4, steps_per_epoch=120),
    "sij-dual-head": Budget(n_train=32000, epochs=9, batch_size=16, lr=2e-3),
    "sij-cnn3-ref": Budget(n_train=6000, epochs=2, batch_size=32, lr=1e-3),
}
QUICK_BUDGETS = {k: Budget(n_train=48, epochs=1, batch_size=8, lr=1e-3, patience=1) for k in ALL_MODELS}
FULL_SIZES = dict(n_val=600, n_test=1000)
QUICK_SIZES = dict(n_val=16, n_test=24)


def _optimizer(budget: Budget, steps_per_epoch: int):
    return adam_cosine(budget.lr, max(1, budget.epochs * steps_per_epoch), alpha=0.05)


@dataclass
class TrainResult:
    model_id: str
    model: Any
    budget: Budget
    wall_time_s: float
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)


def train_model(model_id: str, data: PhantomSplits, budget: Budget, seed: int = 0, quick: bool = False,
                verbose: int = 2, log: Callable[[str], None] | None = print) -> TrainResult:
    """Train one model on `data.train` (first budget.n_train), selecting on `data.val`."""

    keras.utils.set_random_seed(seed)
    train = data.train.head(budget.n_train)
    t0 = time.perf_counter()
    model = build(model_id, quick=quick)
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=budget.patience, restore_best_weights=True)]
    if model_id in SEGMENTERS:
        x, y = segmentation_arrays(train)
        xv, yv = segmentation_arrays(data.val)
        steps = budget.steps_per_epoch or int(np.ceil(len(x) / budget.batch_size))
        model.compile(optimizer=_optimizer(budget, steps), loss=dice_bce_loss)
        if budget.steps_per_epoch:
            ds = _repeating_dataset(x, y, budget.batch_size, seed)
            hist = model.fit(ds, epochs=budget.epochs, steps_per_epoch=steps, validation_data=(xv, yv),
                             callbacks=callbacks, verbose=verbose)
        else:
            hist = model.fit(x, y, batch_size=budget.batch_size, epochs=budget.epochs, shuffle=True,
                             validation_data=(xv, yv), callbacks=callbacks, verbose=verbose)
    else:
        spec = CLASSIFIER_SPECS[model_id]
        batches = ClassifierBatches(train, spec, budget.batch_size, seed, steps=budget.steps_per_epoch)
        # validation: GT masks with one fixed perturbation per case (no intensity augmentation)
        xv = classifier_arrays(data.val, spec, rng=np.random.default_rng([seed, 99]))
        model.compile(optimizer=_optimizer(budget, len(batches)),
                      loss={"as_status": "categorical_crossentropy", "stage": "categorical_crossentropy"},
                      metrics={"as_status": ["accuracy"], "stage": ["accuracy"]})
        hist = model.fit(batches, epochs=budget.epochs, validation_data=(xv, classifier_targets(data.val)),
                         callbacks=callbacks, verbose=verbose)
    wall = time.perf_counter() - t0
    history = {k: [round(float(v), 5) for v in vals] for k, vals in hist.history.items()}
    if log:
        log(f"{model_id}: trained {len(history.get('loss', []))} epochs in {wall:.0f} s")
    return TrainResult(model_id, model, budget, wall, len(history.get("loss", [])), history)
