"""Sacroiliac MRI phantom generator and the sacroiliac manifest import."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from training.manifest import load_sacroiliac_arrays, read_sacroiliac_manifest
from training.phantoms.sacroiliac import (SEED_RANGES, STAGE_NAMES, SacroiliacCase, generate_batch,
                                          generate_case, main, write_dataset)

COLUMNS = ["image_id", "image_path", "mask_path", "AS_status", "stage", "stage_name",
           "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]


def _mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_determinism_same_seed_identical():
    a, b = generate_case(123), generate_case(123)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert (a.stage, a.as_status, a.bbox) == (b.stage, b.as_status, b.bbox)
    assert json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)
    # global numpy RNG state is neither used nor disturbed
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    generate_case(5)
    assert np.random.random() == before


def test_different_seeds_differ():
    a, b = generate_case(1), generate_case(2)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("seed", [0, 7, 42, 100_003, 1_000_001])
def test_labels_consistent(seed):
    c = generate_case(seed)
    assert isinstance(c, SacroiliacCase)
    assert c.image.shape == (256, 256) and c.image.dtype == np.uint8
    assert c.mask.shape == (256, 256) and c.mask.dtype == np.uint8
    assert set(np.unique(c.mask)) <= {0, 1} and c.mask.sum() > 200
    assert c.bbox == _mask_bbox(c.mask)
    assert c.stage in (0, 1, 2, 3)
    assert c.as_status == int(c.stage >= 1)
    assert c.stage_name == STAGE_NAMES[c.stage]
    assert c.params["sequence"] in ("STIR", "T1") and c.params["stage"] == c.stage
    json.dumps(c.params)                                   # JSON-safe
    assert c.image.std() > 20                              # not blank


def test_overrides_and_lesion_lists():
    for stage in range(4):
        c = generate_case(11, stage=stage, sequence="T1")
        assert c.stage == stage and c.params["sequence"] == "T1"
        kinds = {l["type"] for l in c.params["lesions"]}
        if stage == 0:
            assert not kinds
        if stage == 1:
            assert "oedema" in kinds
        if stage == 3:
            assert "ankylosis" in kinds and "sclerosis" in kinds
    with pytest.raises(ValueError):
        generate_case(1, stage=4)
    with pytest.raises(ValueError):
        generate_case(1, sequence="T2")


def test_stages_cover_range_and_sequences_both():
    stages = [generate_case(s).stage for s in range(40)]
    assert set(stages) == {0, 1, 2, 3}
    seqs = {generate_case(s).params["sequence"] for s in range(12)}
    assert seqs == {"STIR", "T1"}


@pytest.mark.parametrize("seed,sequence", [(3, "STIR"), (3, "T1"), (17, "STIR"), (29, "T1")])
def test_lesions_drawn_inside_joint_region(seed, sequence):
    """Same seed: the anatomy and pose do not change with the stage; lesions live in the mask."""
    c0 = generate_case(seed, stage=0, sequence=sequence)
    c2 = generate_case(seed, stage=2, sequence=sequence)
    assert np.array_equal(c0.mask, c2.mask) and c0.bbox == c2.bbox
    diff = np.abs(c0.image.astype(np.float64) - c2.image.astype(np.float64))
    assert diff.sum() > 0
    near = cv2.dilate(c0.mask, np.ones((7, 7), np.uint8)) > 0   # mask + 3 px
    assert diff[near].sum() / diff.sum() > 0.7
    # stage 1 is subtle but present, and also inside the joint region
    c1 = generate_case(seed, stage=1, sequence=sequence)
    d1 = np.abs(c0.image.astype(np.float64) - c1.image.astype(np.float64))
    assert d1.sum() > 0 and d1[near].sum() / d1.sum() > 0.7
    assert d1.sum() < diff.sum()


def test_pose_varies_between_seeds():
    centres = []
    for s in range(8):
        ys, xs = np.nonzero(generate_case(s).mask)
        centres.append((xs.mean(), ys.mean()))
    centres = np.array(centres)
    assert centres[:, 0].std() > 2 and centres[:, 1].std() > 2
    rots = {round(generate_case(s).params["pose"]["rotation_deg"], 1) for s in range(8)}
    assert len(rots) == 8


def test_seed_ranges_disjoint():
    names = list(SEED_RANGES)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = SEED_RANGES[a], SEED_RANGES[b]
            assert max(ra.start, rb.start) >= min(ra.stop, rb.stop), (a, b)


def test_generate_batch_shapes():
    imgs, masks, as_status, stage = generate_batch([0, 1, 2])
    assert imgs.shape == (3, 256, 256) and imgs.dtype == np.uint8
    assert masks.shape == (3, 256, 256) and masks.dtype == np.uint8
    assert as_status.shape == (3,) and stage.shape == (3,)
    assert np.array_equal(as_status, (stage >= 1).astype(as_status.dtype))
    assert np.array_equal(imgs[1], generate_case(1).image)


def test_write_dataset_and_manifest_round_trip(tmp_path):
    seeds = list(SEED_RANGES["val"][:5])
    csv_path = write_dataset(tmp_path / "ds", seeds)
    assert csv_path == tmp_path / "ds" / "annotations" / "dataset.csv"
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert header == COLUMNS and len(body) == 5
    rows = read_sacroiliac_manifest(csv_path)
    for seed, row in zip(seeds, rows):
        c = generate_case(seed)
        assert row.image_path.is_absolute() and row.image_path.is_file()
        assert np.array_equal(cv2.imread(str(row.image_path), cv2.IMREAD_GRAYSCALE), c.image)
        assert np.array_equal(cv2.imread(str(row.mask_path), cv2.IMREAD_GRAYSCALE) > 0, c.mask > 0)
        assert (row.as_status, row.stage, row.bbox) == (c.as_status, c.stage, c.bbox)
    images, masks, as_status, stage = load_sacroiliac_arrays(csv_path, size=64)
    assert images.shape == (5, 64, 64) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert masks.shape == (5, 64, 64) and set(np.unique(masks)) <= {0.0, 1.0} and masks.sum() > 0
    assert list(stage) == [r.stage for r in rows] and list(as_status) == [r.as_status for r in rows]


def _rewrite(csv_path, mutate):
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    mutate(rows)
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def test_manifest_errors(tmp_path):
    csv_path = write_dataset(tmp_path / "ds", [0, 1, 2])
    pristine = csv_path.read_text()

    (tmp_path / "ds" / "images" / "sij_0000001.png").unlink()
    with pytest.raises(ValueError, match=r"sij_0000001.*image_path.*not found"):
        read_sacroiliac_manifest(csv_path)
    shutil.rmtree(tmp_path / "ds")
    csv_path = write_dataset(tmp_path / "ds", [0, 1, 2])

    def inconsistent(rows):
        rows[2]["AS_status"] = "0"
        rows[2]["stage"] = "2"
        rows[2]["stage_name"] = "Moderate"
    _rewrite(csv_path, inconsistent)
    with pytest.raises(ValueError, match=r"line 4.*sij_0000002.*inconsistent"):
        read_sacroiliac_manifest(csv_path)

    csv_path.write_text(pristine)
    _rewrite(csv_path, lambda rows: rows[0].update(stage="5", AS_status="1", stage_name=""))
    with pytest.raises(ValueError, match=r"sij_0000000.*stage must be 0..3"):
        read_sacroiliac_manifest(csv_path)

    csv_path.write_text(pristine.replace("image_path", "img"))
    with pytest.raises(ValueError, match="column"):
        read_sacroiliac_manifest(csv_path)


def test_cli_writes_dataset(tmp_path):
    assert main(["--out", str(tmp_path / "cli"), "--split", "test", "--count", "2"]) == 0
    rows = read_sacroiliac_manifest(tmp_path / "cli" / "annotations" / "dataset.csv")
    assert [r.image_id for r in rows] == ["sij_1000000", "sij_1000001"]
