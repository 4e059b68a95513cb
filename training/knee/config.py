"""What the knee run trains: the model id, the hyper-parameters (`Config`) and where work goes.
No Keras here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


TASK = "knee"
MODEL_ID = "knee-kl-grader"
VERSION = "1.0.0"
WORK_DIR = Path(os.environ.get("JOINTSCAN_KNEE_WORK", "/tmp/jointscan_knee_work"))
LOSS_WEIGHTS = {"kl_value": 1.0, "kl_coral": 4.0, "mirrored": 0.1}   # coral: BCE mean x 4 = CORAL's sum


@dataclass(frozen=True)
class Config:
    size: int = 160
    widths: tuple[int, ...] = (24, 48, 96, 112)
    blocks: tuple[int, ...] = (1, 1, 2, 1)
    embedding_dim: int = 64
    dropout: float = 0.2
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.03
    epochs: int | None = None          # step-based cosine over this many epochs ...
    budget_min: float | None = 55.0    # ... or time-based cosine over this wall-clock budget
    eval_every: int = 2
    seed: int = 0
    n_train: int | None = None         # None: the whole split
    n_val: int | None = None
    contrastive: float = 0.0           # weight of the auxiliary NT-Xent loss on two views (0: off)
    init: str | None = None            # fine-tune: start from this checkpoint's weights (any input size)


QUICK_CONFIG = Config(size=64, widths=(8, 16, 16, 24), blocks=(1, 1, 1, 1), embedding_dim=16, batch_size=8,
               epochs=1, budget_min=None, eval_every=1, n_train=40, n_val=20)
