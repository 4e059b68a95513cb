"""Training one spine segmenter: mixed bfloat16 compute, a cosine schedule over a plan of epochs that a
wall-clock budget may shorten, the float32 model returned.

Resumable: with a work folder, a stopped run (killed, or the session over) continues from its last finished
epoch when the same command is started again: Keras' BackupAndRestore keeps the weights, the optimiser and the
epoch, and `train_state.json` the history and the wall time of every sitting.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np

from tasks.spine import N_CLASSES
from training.spine.data import _batches, load_arrays
from training.spine.model import ModelSpec, build, dice_ce_loss
from training.toolbox.schedule import warmup_cosine


class BudgetCosine:
    """Cosine learning-rate decay over a plan of epochs that a wall-clock budget may shorten.

    Without a budget the plan is `max_epochs`. With one, the plan is set after the first epoch (which
    includes tracing) and revised once after the second: as many epochs as fit in the budget at the
    measured pace, at most `max_epochs`. Training stops when the plan is done, so the schedule always
    decays fully. The number of epochs run is recorded, and `--epochs N` reproduces it without a budget.
    """

    def __init__(self, base_lr: float, steps_per_epoch: int, max_epochs: int, budget_s: float | None,
                 alpha: float = 0.02, log=print, tag: str = ""):
        self.base_lr, self.steps, self.max_epochs = base_lr, steps_per_epoch, max_epochs
        self.budget_s, self.alpha, self.log, self.tag = budget_s, alpha, log, tag
        self.plan = max_epochs

    def lr(self, epoch: int, batch: int) -> float:
        progress = min(1.0, (epoch * self.steps + batch) / max(1, self.plan * self.steps))
        return warmup_cosine(progress, self.base_lr, floor=self.alpha)

    def callback(self):
        outer = self

        class _Cb(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.t_start = self.t_epoch = time.perf_counter()
                self.epoch = 0

            def on_epoch_begin(self, epoch, logs=None):
                self.t_epoch = time.perf_counter()
                self.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                self.model.optimizer.learning_rate.assign(outer.lr(self.epoch, batch))

            def on_epoch_end(self, epoch, logs=None):
                now = time.perf_counter()
                if outer.budget_s and epoch in (0, 1):
                    pace = now - self.t_epoch
                    fit = epoch + 1 + int((outer.budget_s - (now - self.t_start)) // pace)
                    new_plan = max(epoch + 1, min(outer.max_epochs, fit))
                    if new_plan != outer.plan:
                        outer.log(f"[{outer.tag}] budget {outer.budget_s / 60:.0f} min at {pace:.0f} s/epoch: "
                                  f"plan {new_plan} epochs")
                    outer.plan = new_plan
                if epoch + 1 >= outer.plan:
                    self.model.stop_training = True

        return _Cb()


CPUINFO = Path("/proc/cpuinfo")


def cpu_computes_bfloat16() -> bool:
    """True on a CPU with bfloat16 arithmetic (AVX512-BF16 or AMX): there mixed bfloat16 trains about 1.5x
    faster; elsewhere it is emulated and several times slower than float32."""
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train_one(spec: ModelSpec, train_rows, val_rows, *, epochs: int, input_hw: tuple[int, int],
              seed: int, budget_s: float | None = None, mixed_precision: bool | None = None,
              work: Path | None = None, init_weights: list | None = None, lr: float | None = None,
              dice_weights: tuple[float, float, float] | None = None, callbacks=(), log=print):
    """Train a fresh model of `spec` on `train_rows`; returns (float32 model, history dict, wall s, epochs run).

    `work`: the run's folder; a run stopped before its last epoch resumes there (the wall time returned is
    that of every sitting together). A wall-clock budget is planned per sitting, so resuming is meant for
    runs by epochs. `init_weights`: start from these weights (a fine-tune) instead of a fresh initialisation;
    `lr` and `dice_weights` override the spec's.

    Training computes in mixed bfloat16 (about 1.5x faster on CPUs with AVX512-BF16; variables stay
    float32); the returned model is a float32 build of the same architecture holding the trained weights,
    so the shipped file computes in float32 like every other model.
    """

    keras.utils.set_random_seed(seed)
    if mixed_precision is None:
        mixed_precision = cpu_computes_bfloat16()
    t0 = time.perf_counter()
    xs, ys = load_arrays(train_rows, input_hw)
    vx, vy = load_arrays(val_rows, input_hw)
    log(f"[{spec.id}] {len(xs)} training / {len(vx)} validation slices at {input_hw[0]}x{input_hw[1]}, "
        f"{'mixed bfloat16' if mixed_precision else 'float32'}, at most {epochs} epoch(s)"
        + (f" within {budget_s / 60:.0f} min" if budget_s else ""))
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed_precision else "float32")
    try:
        model = build(spec, input_hw)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if init_weights is not None:
        model.set_weights(init_weights)
    base_lr = lr or spec.lr
    bs = min(spec.batch_size, len(xs))
    steps = max(1, len(xs) // bs)
    plan = BudgetCosine(base_lr, steps, epochs, budget_s, log=log, tag=spec.id)
    model.compile(optimizer=keras.optimizers.Adam(base_lr),
                  loss=dice_ce_loss(foreground_weights=dice_weights or spec.dice_weights),
                  metrics=[keras.metrics.OneHotMeanIoU(N_CLASSES, name="miou")])
    eye = np.eye(N_CLASSES, dtype=np.float32)

    state = {"wall_s": 0.0, "sittings": [], "history": {}}
    state_path = Path(work) / "train_state.json" if work is not None else None
    resumable = []
    if state_path is not None:
        Path(work).mkdir(parents=True, exist_ok=True)
        if state_path.exists() and (Path(work) / "backup").exists():
            state = json.loads(state_path.read_text())
            log(f"[{spec.id}] resuming after epoch {len(state['history'].get('loss', []))} "
                f"({state['wall_s']:.0f} s in {len(state['sittings'])} sitting(s) so far)")
        resumable.append(keras.callbacks.BackupAndRestore(str(Path(work) / "backup")))
    prior_wall = float(state["wall_s"])

    def save_state(logs: dict) -> None:
        for k, v in logs.items():
            state["history"].setdefault(k, []).append(round(float(v), 4))
        if state_path is not None:
            elapsed = time.perf_counter() - t0
            state["wall_s"] = round(prior_wall + elapsed, 1)
            state_path.write_text(json.dumps({**state, "sittings": state["sittings"] + [round(elapsed, 1)]}))

    class Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            save_state(logs)
            log(f"[{spec.id}] epoch {epoch + 1}/{plan.plan} " + " ".join(f"{k} {v:.4f}" for k, v in logs.items())
                + f" ({prior_wall + time.perf_counter() - t0:.0f} s)")

    # BackupAndRestore restores the epoch in on_train_begin, before any epoch begins; the caller's callbacks
    # come after it, so that one stopping the run at an epoch's end finds that epoch backed up.
    model.fit(_batches(xs, ys, bs, seed), steps_per_epoch=steps, epochs=epochs,
              validation_data=(vx, eye[vy]), validation_batch_size=bs,
              verbose=0, callbacks=[plan.callback(), Log(), *resumable, *callbacks])
    wall = prior_wall + time.perf_counter() - t0
    history = state["history"]
    ran = len(history.get("loss", [])) or epochs
    shipped = build(spec, input_hw)                      # float32 policy
    shipped.set_weights(model.get_weights())
    return shipped, history, wall, ran
