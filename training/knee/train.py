"""Training the knee grader: augmented batches, warm-up + cosine schedule over epochs or a wall-clock
budget, validation every few epochs, the best weights by val QWK kept.

Resumable: with a checkpoint path, a stopped run (killed, or out of time) continues from its last finished epoch
when the same command is started again: Keras' BackupAndRestore keeps the weights, the optimiser and the epoch
beside the checkpoint, and `train_state.json` the history, the best epoch so far and the wall time of every
sitting, so that the schedule (by epochs or by wall-clock budget) goes on where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tasks.knee import DECISION_HEADS
from training.knee.config import LOSS_WEIGHTS, Config
from training.knee.data import augment, targets
from training.knee.evaluate import best_head, figures, predict_tta
from training.knee.model import build, compile_model, contrastive_trainer, nt_xent
from training.toolbox.batches import ShuffledBatches
from training.toolbox.schedule import warmup_cosine


def set_threads(n: int | None = None) -> None:
    n = n or int(os.environ.get("JOINTSCAN_TRAIN_THREADS", "2"))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (e.g. inside a notebook that ran TF before)
        pass


class GraderBatches(ShuffledBatches):
    """Augmented training batches from uint8 canonical images, reshuffled every epoch."""

    def __init__(self, images: np.ndarray, grades: np.ndarray, batch_size: int, seed: int, views: int = 1):
        self.images, self.grades, self.views = images, grades, views
        super().__init__(len(grades), batch_size, seed)

    def batch(self, idx: np.ndarray, rng: np.random.Generator):
        xs, ms = zip(*(augment(self.images[j].astype(np.float32) / 255.0, rng) for j in idx))
        if self.views == 1:
            return np.stack(xs)[..., None], targets(self.grades[idx], np.array(ms))
        # a second view of each knee: its own augmentation, the SAME mirror flag (orientation is content)
        x2 = [augment(self.images[j].astype(np.float32) / 255.0, rng, mirror=bool(m))[0] for j, m in zip(idx, ms)]
        y = targets(self.grades[idx], np.array(ms))
        y["contrast"] = np.zeros((len(idx), 1), np.float32)
        return (np.stack(xs)[..., None], np.ascontiguousarray(np.stack(x2))[..., None]), y


def _schedule_callback(cfg: Config, steps_per_epoch: int, log: Callable[[str], None], prior_wall_s: float = 0.0):
    class Schedule(keras.callbacks.Callback):
        """Warm-up + cosine on the fraction of the run done: steps (--epochs) or wall clock (--budget-min),
        counted over every sitting of a resumed run."""

        def on_train_begin(self, logs=None):
            self.t0, self.step = time.perf_counter(), 0

        def on_epoch_begin(self, epoch, logs=None):
            self.step = epoch * steps_per_epoch        # a resumed run starts at its restored epoch

        def frac(self) -> float:
            if cfg.epochs:
                return self.step / max(1, cfg.epochs * steps_per_epoch)
            return (prior_wall_s + time.perf_counter() - self.t0) / (60.0 * cfg.budget_min)

        def on_train_batch_begin(self, batch, logs=None):
            self.model.optimizer.learning_rate.assign(warmup_cosine(self.frac(), cfg.lr, floor=0.02,
                                                                    warmup=cfg.warmup_frac))

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if cfg.budget_min and self.frac() >= 1.0:
                self.model.stop_training = True

    return Schedule()


def train(cfg: Config, train_set, val_set, log: Callable[[str], None] = print, ckpt: Path | None = None,
          callbacks: Sequence[keras.callbacks.Callback] = ()):
    """Fit; evaluates val (TTA, regression/coral/mean) every `eval_every` epochs and keeps the best by QWK."""
    keras.utils.set_random_seed(cfg.seed)
    model = build(cfg)
    if cfg.init:
        model.set_weights(keras.models.load_model(cfg.init, compile=False).get_weights())
        log(f"initialised from {cfg.init}")
    if cfg.contrastive:
        trainer = contrastive_trainer(model)
        trainer.compile(optimizer=keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay),
                        loss={"kl_value": "mse", "kl_coral": "binary_crossentropy",
                              "mirrored": "binary_crossentropy", "contrast": nt_xent},
                        loss_weights={**LOSS_WEIGHTS, "contrast": cfg.contrastive})
    else:
        trainer = compile_model(model, cfg)
    batches = GraderBatches(train_set.images, train_set.grades, cfg.batch_size, cfg.seed,
                      views=2 if cfg.contrastive else 1)
    history: list[dict[str, Any]] = []
    best = {"qwk": -2.0, "epoch": 0, "weights": None, "head": None}

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            last = self.model.stop_training or (cfg.epochs and epoch + 1 >= cfg.epochs)
            if (epoch + 1) % cfg.eval_every and not last:
                history.append({"epoch": epoch + 1, "loss": round(float(logs.get("loss", np.nan)), 4)})
                return
            pred = predict_tta(model, val_set.images)
            figs = figures(val_set.grades, pred)
            head = best_head(figs)
            side_acc = float((pred["canon_ok"] > 0.5).mean())
            row = {"epoch": epoch + 1, "loss": round(float(logs.get("loss", np.nan)), 4),
                   "lr": float(self.model.optimizer.learning_rate.numpy()), "side_acc": round(side_acc, 4),
                   **{f"{h}_{k}": figs[h][k] for h in DECISION_HEADS for k in ("accuracy", "qwk", "mae")},
                   "elapsed_s": round(prior["wall_s"] + time.perf_counter() - t0, 1)}
            history.append(row)
            log(json.dumps(row))
            if figs[head]["qwk"] > best["qwk"]:
                best.update(qwk=figs[head]["qwk"], epoch=epoch + 1, weights=model.get_weights(), head=head)
                if ckpt is not None:
                    model.save(ckpt)

    steps = len(batches)
    epochs = cfg.epochs or 1000
    state_path = ckpt.parent / "train_state.json" if ckpt is not None else None
    backup = ckpt.parent / "backup" if ckpt is not None else None
    prior = {"wall_s": 0.0, "sittings": 0}
    if state_path is not None and state_path.exists() and backup.exists():
        prior = json.loads(state_path.read_text())          # a stopped run: go on where it stopped
        history.extend(prior.get("history", []))
        if prior.get("best_epoch") and ckpt.exists():
            best.update(qwk=prior["best_qwk"], epoch=prior["best_epoch"], head=prior["best_head"],
                        weights=keras.models.load_model(ckpt, compile=False).get_weights())
        log(f"resuming after epoch {history[-1]['epoch'] if history else 0} "
            f"({prior['wall_s']:.0f} s in {prior['sittings']} sitting(s) so far)")

    def save_state(wall_so_far: float) -> None:
        if state_path is not None:
            state_path.write_text(json.dumps({"wall_s": round(wall_so_far, 1), "sittings": prior["sittings"] + 1,
                                              "history": history, "best_qwk": best["qwk"],
                                              "best_epoch": best["epoch"], "best_head": best["head"]}))

    class SaveState(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            save_state(prior["wall_s"] + time.perf_counter() - t0)

    fit_callbacks = [_schedule_callback(cfg, steps, log, prior["wall_s"]), Evaluate(), SaveState()]
    if backup is not None:
        fit_callbacks.append(keras.callbacks.BackupAndRestore(str(backup)))
    t0 = time.perf_counter()
    trainer.fit(batches, epochs=epochs, verbose=0, callbacks=fit_callbacks + list(callbacks))
    wall = prior["wall_s"] + time.perf_counter() - t0
    save_state(wall)
    if best["weights"] is not None:
        model.set_weights(best["weights"])
    log(f"trained {len(history)} epochs in {wall:.0f} s over {prior['sittings'] + 1} sitting(s); best val QWK "
        f"{best['qwk']:.4f} at epoch {best['epoch']} ({best['head']} head)")
    return model, {"history": history, "best_epoch": best["epoch"], "wall_time_s": round(wall, 1),
                   "epochs_run": len(history), "sittings": prior["sittings"] + 1}
