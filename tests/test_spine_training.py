"""Spine training on a few synthetic slices (no data needed): a run stopped part-way resumes from its last
finished epoch with the same work folder, and a two-stage model's fine-tune starts from the first stage's
weights and trains with its own loss weights."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from tasks.spine import DATASET_VALUES
from training.spine.model import ATTENTION_UNET, SPECS, dice_ce_loss
from training.spine.train import cpu_computes_bfloat16, train_one
from tests.stopped_runs import Stop, StopAfter

HW = (32, 32)
TINY = dataclasses.replace(SPECS[ATTENTION_UNET], builder_kwargs={"filters": (4, 4, 4, 4, 4)}, batch_size=2)


def _rows(folder, n: int, patient: str):
    """Synthetic slices: a bright vertebra-like square above a darker disc band, their dataset mask values."""
    rng = np.random.default_rng(len(patient) + n)
    rows = []
    for i in range(n):
        image = (rng.random((40, 32)) * 40).astype(np.uint8)
        mask = np.zeros((40, 32), np.uint8)
        top = int(rng.integers(2, 12))
        image[top:top + 10, 8:24] = 200
        mask[top:top + 10, 8:24] = DATASET_VALUES[1]
        image[top + 10:top + 14, 8:24] = 120
        mask[top + 10:top + 14, 8:24] = DATASET_VALUES[2]
        image[:, 26:29] = 250
        mask[:, 26:29] = DATASET_VALUES[3]
        img_path, mask_path = folder / f"{patient}_{i}.png", folder / f"{patient}_{i}_mask.png"
        cv2.imwrite(str(img_path), image)
        cv2.imwrite(str(mask_path), mask)
        rows.append({"image_path": str(img_path), "mask_path": str(mask_path), "patient": patient})
    return rows


@pytest.fixture()
def rows(tmp_path):
    return _rows(tmp_path, 6, "1"), _rows(tmp_path, 2, "2")


def test_a_stopped_run_resumes_where_it_stopped(rows, tmp_path):
    train, val = rows
    work = tmp_path / "work"
    with pytest.raises(Stop):
        train_one(TINY, train, val, epochs=3, input_hw=HW, seed=0, work=work, callbacks=[StopAfter(2)],
                  log=lambda m: None)
    state = json.loads((work / "train_state.json").read_text())
    assert len(state["history"]["loss"]) == 2 and len(state["sittings"]) == 1 and (work / "backup").is_dir()

    said = []
    model, history, wall, ran = train_one(TINY, train, val, epochs=3, input_hw=HW, seed=0, work=work,
                                          log=said.append)
    assert any("resuming after epoch 2" in line for line in said)
    assert ran == 3 and len(history["val_loss"]) == 3               # epoch 3 only, not a fresh start
    epochs = [line.split("] ")[1].split()[1] for line in said if "] epoch " in line]
    assert epochs == ["3/3"]
    state = json.loads((work / "train_state.json").read_text())
    assert len(state["sittings"]) == 2 and wall == pytest.approx(state["wall_s"], abs=1.0)
    assert wall >= state["sittings"][0] and not (work / "backup").exists()   # finished: no backup left
    assert model.output_shape[-1] == 4


def test_a_fine_tune_starts_from_the_given_weights(rows):
    train, val = rows
    first, _, _, _ = train_one(TINY, train, val, epochs=1, input_hw=HW, seed=0, log=lambda m: None)
    start = first.get_weights()
    # no epochs to speak of: a learning rate of ~0 leaves the given weights where they were
    tuned, _, _, _ = train_one(TINY, train, val, epochs=1, input_hw=(48, 48), seed=5, init_weights=start,
                               lr=1e-12, log=lambda m: None)
    fresh, _, _, _ = train_one(TINY, train, val, epochs=1, input_hw=(48, 48), seed=5, lr=1e-12, log=lambda m: None)
    kernels = [i for i, w in enumerate(start) if w.ndim == 4]
    assert all(np.allclose(tuned.get_weights()[i], start[i], atol=1e-4) for i in kernels)
    assert not all(np.allclose(fresh.get_weights()[i], start[i], atol=1e-4) for i in kernels)


def test_the_disc_weight_counts_in_the_soft_dice():
    eye = np.eye(4, dtype=np.float32)
    truth = eye[np.array([[1, 1, 2, 3]])][None]                      # (1, 1, 4, 4)
    guess = eye[np.array([[1, 1, 1, 3]])][None] * 0.98 + 0.005        # the disc missed
    plain = float(dice_ce_loss()(truth, guess))
    weighted = float(dice_ce_loss(foreground_weights=(1.0, 2.0, 1.0))(truth, guess))
    assert weighted > plain                                         # a missed disc costs more


def test_bfloat16_only_where_the_cpu_computes_it(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("flags : fpu sse2 avx2\n")
    monkeypatch.setattr("training.spine.train.CPUINFO", fake)
    assert cpu_computes_bfloat16() is False
    fake.write_text("flags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_computes_bfloat16() is True
