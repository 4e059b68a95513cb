"""A knee training run stopped part-way continues from its last finished epoch when started again with the same
checkpoint folder: the epochs, the best epoch and the wall time of both sittings add up."""
from __future__ import annotations

import dataclasses
import json

import pytest

from training.knee.config import QUICK_CONFIG
from training.knee.data import load_data
from training.knee.train import train
from tests.stopped_runs import Stop, StopAfter


def test_a_stopped_run_resumes_where_it_stopped(tmp_path):
    cfg = dataclasses.replace(QUICK_CONFIG, epochs=3)
    train_set, val_set, _ = load_data(cfg, True, lambda m: None)
    ckpt = tmp_path / "grader.ckpt.keras"
    with pytest.raises(Stop):
        train(cfg, train_set, val_set, lambda m: None, ckpt=ckpt, callbacks=[StopAfter(2)])
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2] and (tmp_path / "backup").is_dir()
    first_wall = state["wall_s"]

    said = []
    model, info = train(cfg, train_set, val_set, said.append, ckpt=ckpt)
    assert any(line.startswith("resuming after epoch 2") for line in said)
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3]          # epoch 3 only, not a fresh start
    assert info["sittings"] == 2 and info["wall_time_s"] >= first_wall
    assert 1 <= info["best_epoch"] <= 3 and not (tmp_path / "backup").exists()   # finished: no backup left
    assert model.output_names
