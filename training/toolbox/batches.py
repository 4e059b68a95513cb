"""The Keras batch feeder for training data augmented on the fly (the sacroiliac classifiers, the knee grader)."""
from __future__ import annotations

import math

import keras
import numpy as np


class ShuffledBatches(keras.utils.PyDataset):
    """Training batches built on the fly from item indices, in a new order every epoch.

    Batch i of epoch e is built by `batch(indices, rng)` with rng = default_rng([seed, e, i]), so a run
    is reproducible batch by batch. Subclasses give `batch`, and may give `epoch_order` (default: a
    permutation of the items drawn from default_rng([seed, e])).
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, steps: int | None = None):
        super().__init__(workers=1, use_multiprocessing=False)
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.steps = steps or int(math.ceil(n_items / batch_size))
        self.epoch = 0
        self.order = self.epoch_order()

    def epoch_order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)

    def batch(self, idx: np.ndarray, rng: np.random.Generator):
        raise NotImplementedError

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        return self.batch(idx, np.random.default_rng([self.seed, self.epoch, i]))

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self.epoch_order()
