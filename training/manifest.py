"""Import manifests: the CSV files that list a dataset's images and labels, for every task.

`read_manifest_rows` reads any task's manifest (required columns, paths relative to the CSV); the
sacroiliac layout below has its own, stricter validation on top of the same reading.

Layout of a sacroiliac dataset (what `training.phantoms.sacroiliac.write_dataset` writes)::

    ROOT/images/<image_id>.png
    ROOT/masks/<image_id>.png            (joint region, 0 / 255; optional)
    ROOT/annotations/dataset.csv

with columns ``image_id,image_path,mask_path,AS_status,stage,stage_name,bbox_x1,bbox_y1,bbox_x2,bbox_y2``.
Relative paths are relative to ROOT (the folder above ``annotations/``); absolute paths are
accepted too.  ``image_id`` and ``image_path`` are required in every row; the label columns may
be left empty for images without that label (a clinic may have masks but no stage, or the reverse).
"""
from __future__ import annotations

import csv
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from imaging.normalize import to_model_input

SACROILIAC_COLUMNS = ("image_id", "image_path", "mask_path", "AS_status", "stage", "stage_name",
                      "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
REQUIRED_COLUMNS = ("image_id", "image_path")
STAGE_NAMES = ("Normal", "Early", "Moderate", "Advanced")
_BBOX = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


@dataclass
class ManifestRow:
    image_id: str
    image_path: Path                                   # absolute
    mask_path: Path | None = None                      # absolute
    as_status: int | None = None
    stage: int | None = None
    bbox: tuple[int, int, int, int] | None = None      # x1, y1, x2, y2 (end-exclusive)


def dataset_root(csv_path: Path) -> Path:
    """ROOT for a manifest at ROOT/annotations/<name>.csv; the csv's own folder otherwise."""
    csv_path = Path(csv_path).resolve()
    return csv_path.parent.parent if csv_path.parent.name == "annotations" else csv_path.parent


def _int_cell(value: str, column: str, where: str) -> int | None:
    value = (value or "").strip()
    if value == "":
        return None
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"{where}: {column} must be an integer, got {value!r}") from None
    if not f.is_integer():
        raise ValueError(f"{where}: {column} must be an integer, got {value!r}")
    return int(f)


@contextmanager
def _csv_records(csv_path: Path) -> Iterator[tuple[list[str], Iterator[tuple[int, dict[str, str]]]]]:
    """(header, (line number, record) per row): names and values stripped, a byte-order mark ignored."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        yield header, ((line_no, {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None})
                       for line_no, raw in enumerate(reader, start=2))          # line 1 is the header


def read_manifest_rows(csv_path: str | os.PathLike, columns: Sequence[str], paths: Sequence[str] = ()
                       ) -> list[dict[str, str]]:
    """Rows of a manifest CSV holding at least `columns`; values stripped, and the `paths` columns
    joined to the CSV's folder when relative. A missing column raises ValueError naming it."""
    csv_path = Path(csv_path)
    rows = []
    with _csv_records(csv_path) as (header, records):
        missing = set(columns) - set(header)
        if missing:
            raise ValueError(f"manifest {csv_path} lacks the column(s) {sorted(missing)}")
        for _, rec in records:
            row = {k: rec.get(k, "") for k in header}
            for k in paths:
                if not Path(row[k]).is_absolute():
                    row[k] = str(csv_path.parent / row[k])
            rows.append(row)
    return rows


def read_sacroiliac_manifest(csv_path: Path) -> list[ManifestRow]:
    """Read and validate a sacroiliac manifest; every problem raises ValueError naming the row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"manifest not found: {csv_path}")
    root = dataset_root(csv_path)
    with _csv_records(csv_path) as (header, records):
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing required column(s) {', '.join(missing)}; "
                             f"expected columns {','.join(SACROILIAC_COLUMNS)}")
        unknown = [h for h in header if h not in SACROILIAC_COLUMNS]
        if unknown:
            raise ValueError(f"{csv_path}: unknown column(s) {', '.join(unknown)}; "
                             f"expected columns {','.join(SACROILIAC_COLUMNS)}")
        present_bbox = [c for c in _BBOX if c in header]
        if present_bbox and len(present_bbox) != 4:
            raise ValueError(f"{csv_path}: bbox needs all four columns {', '.join(_BBOX)}")
        rows: list[ManifestRow] = []
        seen: set[str] = set()
        for line_no, rec in records:
            iid = rec.get("image_id", "")
            where = f"{csv_path.name} line {line_no} (image_id {iid!r})"
            if not iid:
                raise ValueError(f"{where}: empty image_id")
            if iid in seen:
                raise ValueError(f"{where}: duplicate image_id")
            seen.add(iid)

            def resolve(column: str, required: bool) -> Path | None:
                value = rec.get(column, "")
                if not value:
                    if required:
                        raise ValueError(f"{where}: empty {column}")
                    return None
                p = Path(value)
                p = p if p.is_absolute() else root / p
                if not p.is_file():
                    raise ValueError(f"{where}: {column} file not found: {p}")
                return p.resolve()

            image_path = resolve("image_path", True)
            mask_path = resolve("mask_path", False)
            as_status = _int_cell(rec.get("AS_status", ""), "AS_status", where)
            stage = _int_cell(rec.get("stage", ""), "stage", where)
            if as_status is not None and as_status not in (0, 1):
                raise ValueError(f"{where}: AS_status must be 0 or 1, got {as_status}")
            if stage is not None and not 0 <= stage <= 3:
                raise ValueError(f"{where}: stage must be 0..3, got {stage}")
            if stage is not None and as_status is not None and as_status != int(stage >= 1):
                raise ValueError(f"{where}: AS_status {as_status} is inconsistent with stage {stage} "
                                 f"(AS_status must be 1 exactly when stage >= 1)")
            name = rec.get("stage_name", "")
            if name:
                if name not in STAGE_NAMES:
                    raise ValueError(f"{where}: stage_name must be one of {', '.join(STAGE_NAMES)}, got {name!r}")
                if stage is None:
                    stage = STAGE_NAMES.index(name)
                elif STAGE_NAMES[stage] != name:
                    raise ValueError(f"{where}: stage_name {name!r} does not match stage {stage}")
            bbox = None
            vals = [_int_cell(rec.get(c, ""), c, where) for c in _BBOX]
            if any(v is not None for v in vals):
                if any(v is None for v in vals):
                    raise ValueError(f"{where}: bbox needs all four of {', '.join(_BBOX)} or none")
                x1, y1, x2, y2 = vals
                if not (0 <= x1 < x2 and 0 <= y1 < y2):
                    raise ValueError(f"{where}: bbox must satisfy 0 <= x1 < x2 and 0 <= y1 < y2, got {tuple(vals)}")
                bbox = (x1, y1, x2, y2)
            rows.append(ManifestRow(iid, image_path, mask_path, as_status, stage, bbox))
    if not rows:
        raise ValueError(f"{csv_path}: the manifest has no rows")
    return rows


def _to_model_input(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(to_model_input(img, (size, size)), dtype=np.float32)


def load_sacroiliac_arrays(csv_path: Path, size: int = 128
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images float32 (N, size, size) in [0, 1], masks float32 {0, 1}, AS status and stage (int64).

    Rows without a mask get an all-zero mask; rows without AS status or stage get -1 there,
    so callers can filter (``as_status >= 0``) for the head they train.
    """
    rows = read_sacroiliac_manifest(csv_path)
    n = len(rows)
    images = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.float32)
    as_status = np.full(n, -1, np.int64)
    stage = np.full(n, -1, np.int64)
    for i, r in enumerate(rows):
        img = cv2.imread(str(r.image_path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"image_id {r.image_id!r}: cannot read image {r.image_path}")
        images[i] = _to_model_input(img, size)
        if r.mask_path is not None:
            m = cv2.imread(str(r.mask_path), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise ValueError(f"image_id {r.image_id!r}: cannot read mask {r.mask_path}")
            if m.shape != img.shape:
                raise ValueError(f"image_id {r.image_id!r}: mask shape {m.shape} differs from image {img.shape}")
            m = cv2.resize((m > 0).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
            masks[i] = (m > 0).astype(np.float32)
        if r.as_status is not None:
            as_status[i] = r.as_status
        elif r.stage is not None:
            as_status[i] = int(r.stage >= 1)
        if r.stage is not None:
            stage[i] = r.stage
    return images, masks, as_status, stage
