"""The finger-joint detector on the five real children's hands of ../shared/data/hand_xray_paediatric, against
joint centres marked by eye (benchmarks/data/hand_real_joints.csv: the gap between the ossified phalanges at
each PIP and DIP joint, read off zoomed views with a pixel grid, and each hand's finger width, the soft tissue
of its middle finger at the PIP joint, in pixels). Numbers only: no image is committed.

    .venv/bin/python benchmarks/hand_real_joints.py [--models DIR]

Per joint: the detector's status (found, unsure, missing), its confidence, and the distance of its box centre
from the mark in finger widths. The target (issue #19): all 40 within a quarter of a finger width, at least 36
of them found with confidence. Exit status 0 when the marks and images are there (the figures are reported,
not asserted).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.hand.real_hands import MARKS, NEAR, folder, joints_against_marks, task_detector  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models", help="models directory (its default detector)")
    args = ap.parse_args(argv)
    if not folder().is_dir():
        print(f"skipped: {folder()} is absent (set JOINTSCAN_DATA_DIR)")
        return 0
    figures = joints_against_marks(task_detector(args.models))
    print(f"the default joint detector on {figures['hands']} real children's hands; marks: "
          f"{MARKS.relative_to(ROOT)}")
    print(f"{'file':6s} {'joint':5s} {'status':8s} {'conf':>5s} {'distance (finger widths)':>25s}")
    for r in figures["rows"]:
        d = r["distance"]
        print(f"{r['file']:6s} {r['joint']:5s} {r['status']:8s} {r['confidence']:5.2f} "
              f"{'-' if d is None else f'{d:.2f}':>25s}"
              f"{'' if r['located'] else '  (not on the joint)' if d is not None else ''}")
    print(f"\n{figures['joints']} joints: {figures['found']} found, {figures['unsure']} unsure, "
          f"{figures['missing']} missing; {figures['located']} located within {NEAR} finger width, "
          f"{figures['located_and_found']} of them found with confidence; median distance "
          f"{figures['median_distance']} finger widths (target: all {figures['joints']} located, >= 36 with "
          "confidence)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
