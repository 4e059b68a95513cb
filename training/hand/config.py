"""What the hand run trains, and with which budget. No Keras here: the pipeline reads it before the
phantom data is generated in forked workers, which must start before TensorFlow loads.
"""
from __future__ import annotations

from dataclasses import dataclass


DETECTOR_ID = "hand-joint-detector"
SCORER_ID = "hand-guss-scorer"
POSITION_ID = "hand-guss-scorer-position"
ALL_MODELS = (DETECTOR_ID, SCORER_ID, POSITION_ID)


@dataclass(frozen=True)
class Budget:
    patients: int
    det_epochs: int
    det_batch: int
    scorer_steps: int
    scorer_batch: int          # per stream (stage 1 and stage 2 each)
    eval_every: int
    det_lr: float = 2e-3
    scorer_lr: float = 2e-3
    # The detector's second stage: the first (det_epochs on adult phantoms, narrow augmentation) fine-tuned on
    # adults and children (training.phantoms.hand.CHILD_POOL, the detector's only) with the wide augmentation
    # of real radiographs (scale 0.8-1.3, side markers, collimator edges).
    children: int = 0
    det_finetune_epochs: int = 0
    det_finetune_lr: float = 5e-4
    child_repeat: int = 1       # each child radiograph this many times per second-stage epoch


FULL_BUDGET = Budget(patients=1000, det_epochs=14, det_batch=16, scorer_steps=1800, scorer_batch=48, eval_every=300,
                     children=400, det_finetune_epochs=8, child_repeat=2)
QUICK_BUDGET = Budget(patients=24, det_epochs=1, det_batch=8, scorer_steps=6, scorer_batch=8, eval_every=3,
                      children=10, det_finetune_epochs=1)
