"""A training run stopped part-way, for the resume tests: a callback that kills the run at the end of an epoch
(after its backup is written, when it comes after BackupAndRestore), as a stopped machine would."""
from __future__ import annotations

import keras


class Stop(Exception):
    pass


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise Stop
