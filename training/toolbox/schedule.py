"""Learning-rate schedules: the warm-up + cosine curve every task trains with.

Two forms of the same curve: `warmup_cosine` is the learning rate at a fraction of the run (for
callbacks that measure progress in steps or wall-clock time), `adam_cosine` is Adam driven by Keras'
own step-based `CosineDecay` (for runs of a known number of steps).
"""
from __future__ import annotations

import math


def warmup_cosine(progress: float, base_lr: float, floor: float = 0.02, warmup: float = 0.0) -> float:
    """Learning rate at `progress` (0..1) of the run: linear warm-up over the first `warmup` fraction
    (from floor x base_lr), then cosine decay from base_lr down to floor x base_lr."""
    if progress < warmup:
        return base_lr * max(progress / warmup, floor)
    t = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return base_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def adam_cosine(lr: float, decay_steps: int, alpha: float):
    """Adam with Keras' cosine decay from `lr` to alpha x lr over `decay_steps` steps."""
    import keras  # deferred: importing this module must not start TensorFlow

    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=decay_steps, alpha=alpha, warmup_target=None)
    return keras.optimizers.Adam(learning_rate=schedule)
