"""The joint detector on real children's hands (../shared/data/hand_xray_paediatric), against joint centres
marked by eye in benchmarks/data/hand_real_joints.csv (numbers only: the gap between the ossified phalanges at
each PIP and DIP joint, and each hand's finger width in pixels, the soft tissue of its middle finger at the PIP
joint). Read by the detector's export (its card and registry figures) and by benchmarks/hand_real_joints.py.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from training.toolbox.runs import REPO_ROOT, data_dir

MARKS = REPO_ROOT / "benchmarks" / "data" / "hand_real_joints.csv"
FOLDER = "hand_xray_paediatric"
NEAR = 0.25          # a box centre within a quarter of a finger width of the mark locates the joint


@dataclass(frozen=True)
class Mark:
    file: str
    joint: str
    x: float
    y: float
    finger_width: float


def read_marks(path: Path = MARKS) -> list[Mark]:
    with Path(path).open(newline="") as fh:
        return [Mark(r["file"], r["joint"], float(r["x"]), float(r["y"]), float(r["finger_width_px"]))
                for r in csv.DictReader(fh)]


def distance_in_widths(mark: Mark, box) -> float | None:
    """Distance from the mark to a box's centre, in finger widths (None without a box)."""
    if not box:
        return None
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return float(((cx - mark.x) ** 2 + (cy - mark.y) ** 2) ** 0.5 / mark.finger_width)


def folder() -> Path:
    return data_dir() / FOLDER


def joints_against_marks(detect: Callable[[bytes], list[dict[str, Any]]], marks: list[Mark] | None = None,
                         images: Path | None = None) -> dict[str, Any] | None:
    """Per joint (status, confidence, distance) and the totals, for `detect`: the bytes of a radiograph ->
    the task's joint list (name, status, confidence, box). None when the images are absent."""
    images = images or folder()
    if not images.is_dir():
        return None
    marks = marks if marks is not None else read_marks()
    found: dict[str, dict[str, dict]] = {}
    for name in sorted({m.file for m in marks}):
        found[name] = {j["name"]: j for j in detect((images / name).read_bytes())}
    rows = []
    for m in marks:
        j = found[m.file].get(m.joint, {})
        d = distance_in_widths(m, j.get("box"))
        rows.append({"file": m.file, "joint": m.joint, "status": j.get("status", "missing"),
                     "confidence": float(j.get("confidence", 0.0)), "distance": d,
                     "located": d is not None and d <= NEAR})
    distances = [r["distance"] for r in rows if r["distance"] is not None]
    return {
        "rows": rows, "hands": len(found), "joints": len(rows),
        **{s: sum(r["status"] == s for r in rows) for s in ("found", "unsure", "missing")},
        "located": sum(r["located"] for r in rows),
        "located_and_found": sum(r["located"] and r["status"] == "found" for r in rows),
        "median_distance": round(float(np.median(distances)), 3) if distances else None,
    }


def task_detector(models_dir: Path, detector_id: str | None = None) -> Callable[[bytes], list[dict[str, Any]]]:
    """`detect` for joints_against_marks: the hand task with a registry's detector (and its default scorer)."""
    from imaging.io import read_image
    from model_loader import ModelRegistry
    from tasks.hand import TASK

    reg = ModelRegistry(models_dir)
    detector = detector_id or next(e.id for e in reg.entries("hand") if e.role == "detector" and e.default)
    scorers = [e.id for e in reg.entries("hand") if e.role == "scorer" and e.default]
    models = {"detector": [reg.load(detector)], "scorer": [reg.load(s) for s in scorers]}

    def detect(data: bytes) -> list[dict[str, Any]]:
        return TASK.run(read_image(data), models, {}).models[0].result["joints"]

    return detect
