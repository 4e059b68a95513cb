"""The sacroiliac disease region on studies: inputs shared with serving, folds by case, resumable training."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from imaging.normalize import normalise_volume
from tasks.sacroiliac_region import region_mask, region_target, slice_stacks
from tests.data_gate import real_data
from training.sacroiliac import studies
from training.sacroiliac.region import QUICK, RegionConfig, cross_validate, region_scores, train_region
from training.sacroiliac.studies import CASE_FOLDS, RegionExamples, folds_of

needs_studies = real_data(studies.studies_dir() / "disease_region")


def test_folds_never_put_a_case_on_both_sides_and_test_each_case_once():
    ids = sorted(c for fold in CASE_FOLDS for c in fold)
    folds = folds_of(ids)
    assert len(folds) == 3
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(train + test) == ids
    assert sorted(c for _, test in folds for c in test) == ids
    # A case no fold names is always trained on, never tested.
    assert all("9999" in train for train, _ in folds_of(ids + ["9999"]))


def test_volumes_are_normalised_as_a_whole_and_stacked_with_their_neighbours():
    volume = np.stack([np.full((20, 20), float(k)) for k in range(5)])     # slice k is uniformly k
    norm = normalise_volume(volume)
    assert norm[0].max() < norm[4].min()                                   # relative brightness kept
    stacks = slice_stacks(volume, size=10)
    assert stacks.shape == (5, 10, 10, 3)
    assert stacks[0, 0, 0].tolist() == [0, 0, 1]                           # the first slice repeats itself
    assert stacks[2, 0, 0].tolist() == [1, 2, 3]
    assert stacks[4, 0, 0].tolist() == [3, 4, 4]


def test_region_target_and_mask_round_trip_the_grid():
    mask = np.zeros((2, 40, 60), bool)
    mask[:, 10:30, 20:50] = True
    target = region_target(mask, size=32)
    assert target.shape == (2, 32, 32, 1)
    back = region_mask(target, (40, 60))
    assert back.shape == mask.shape
    assert region_scores(back, mask)["volume_dice"] > 0.95


def test_region_scores_by_hand():
    truth = np.zeros((3, 10, 10), bool)
    truth[0, :5] = True                 # slice 0: 50 px
    pred = np.zeros_like(truth)
    pred[0, :5, :5] = True              # 25 px inside: Dice 2*25/75
    pred[1, 0, 0] = True                # a false positive on a slice without region: Dice 0
    scores = region_scores(pred, truth)  # slice 2: empty in both, not counted
    assert scores["n_slices"] == 2
    assert scores["slice_dice_mean"] == pytest.approx((2 * 25 / 75 + 0.0) / 2)
    assert scores["volume_dice"] == pytest.approx(2 * 25 / 76)


def synthetic_examples(n: int = 6, size: int = 64) -> RegionExamples:
    rng = np.random.default_rng(0)
    y = np.zeros((n, size, size, 1), np.float32)
    y[:, 20:44, 16:48] = 1.0
    x = (rng.random((n, size, size, 3)) * 0.3 + y * 0.6).astype(np.float32)
    return RegionExamples(x, y, np.array(["c"] * n), np.array(["T1W"] * n))


class StopAfterFirstEpoch(Exception):
    pass


def test_a_stopped_run_continues_from_its_last_epoch(tmp_path):
    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise StopAfterFirstEpoch

    config = RegionConfig(**{**QUICK.__dict__, "epochs": 3})
    with pytest.raises(StopAfterFirstEpoch):
        train_region(synthetic_examples(), config, tmp_path, log=lambda m: None, callbacks=[Stop()])
    assert (tmp_path / "backup").is_dir()                                   # the finished epoch was kept
    epochs_run = []

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_run.append(epoch)

    _, record = train_region(synthetic_examples(), config, tmp_path, log=lambda m: None, callbacks=[Count()])
    assert epochs_run == [1, 2]                                             # continued, not restarted
    assert record["sittings"] == 1 and record["wall_s"] > 0


@needs_studies
def test_real_studies_give_one_example_per_slice_and_sequence():
    cases = studies.labelled_cases()
    assert sorted(c.case_id for c in cases) == sorted(c for fold in CASE_FOLDS for c in fold)
    two = [c for c in cases if c.case_id in ("1007", "1001")]
    examples = studies.region_examples(two, size=64)
    # 1007 has T1W and STIR, 1001 T1W only: 25 slices each.
    assert len(examples) == 75
    assert set(examples.sequences) == {"T1W", "STIR"}
    assert examples.y.max() == 1.0 and 0.05 < examples.y.mean() < 0.6


@needs_studies
def test_cross_validation_scores_only_held_out_cases(tmp_path):
    config = RegionConfig(**{**QUICK.__dict__, "epochs": 1, "steps_per_epoch": 1})
    result = cross_validate(config, tmp_path, folds=[0], log=lambda m: None)
    tested = {key.split("_")[0] for key in result["per_case"]}
    assert tested == set(CASE_FOLDS[0])
    assert set(result["summary"]) >= {"all", "T1W", "STIR"}
    assert (tmp_path / "fold0" / "scores.json").exists()
    # Started again: the finished fold is read back (same scores), not trained again.
    log: list[str] = []
    again = cross_validate(config, tmp_path, folds=[0], log=log.append)
    assert "fold0: finished earlier, read back" in log and not any(m.startswith("trained on") for m in log)
    assert again["per_case"] == result["per_case"]
