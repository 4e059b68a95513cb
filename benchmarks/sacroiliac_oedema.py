"""Bone marrow oedema on real sacroiliac STIR against the readers, beside the readers against each other.

On the 5 cases of ../shared/data/sij_mri_nifti with oedema masks from two readers who each segmented
twice (4 sessions), inside the manual disease region:
  * readers vs readers: mean Dice and volume similarity over the 6 pairs of sessions, per case;
  * the intensity method (automatic normal-marrow reference, tasks.sacroiliac_inflammation) against
    each of the 4 sessions, with its margin chosen by leave-one-case-out cross-validation (the margin
    used on a case is the one that agreed best with the readers on the other four cases);
  * the lesion volume in mL beside the readers' range.

    .venv/bin/python benchmarks/sacroiliac_oedema.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging.volume import read_nifti  # noqa: E402
from tasks.metrics import dice  # noqa: E402
from tasks.sacroiliac_inflammation import marrow_reference, oedema_mask  # noqa: E402
from training.toolbox.runs import data_dir  # noqa: E402

CASES = ("1007", "1012", "1013", "1016", "3002")
SESSIONS = ("R11", "R12", "R21", "R22")
MARGINS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def volume_similarity(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(1 - abs(int(a.sum()) - int(b.sum())) / total) if total else 1.0


def load_case(root: Path, case: str):
    read = lambda p: read_nifti(p.read_bytes()).volumes[0]  # noqa: E731
    stir = read(next(root.glob(f"images/*/{case}_STIR.nii.gz")))
    region = read(root / "disease_region" / f"{case}_disease_region.nii.gz").voxels > 0
    readers = {s: read(root / "inflammation" / s / f"{case}_inflammation_{s}.nii.gz").voxels > 0 for s in SESSIONS}
    return stir, region, readers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir()), help="the real-data folder (default: JOINTSCAN_DATA_DIR "
                                                                 "or ../shared/data)")
    args = parser.parse_args()
    root = Path(args.data) / "sij_mri_nifti"
    if not root.is_dir():
        print(f"skipped: {root} not found (set JOINTSCAN_DATA_DIR)")
        return 0
    cases = {c: load_case(root, c) for c in CASES}
    # Agreement of each margin with the readers, per case (mean Dice over the 4 sessions).
    by_margin: dict[float, dict[str, float]] = {}
    masks: dict[tuple[float, str], np.ndarray] = {}
    for case, (stir, region, readers) in cases.items():
        reference = marrow_reference(stir.voxels, region)
        for margin in MARGINS:
            mask = oedema_mask(stir.voxels, region, reference, margin_sd=margin)
            masks[margin, case] = mask
            by_margin.setdefault(margin, {})[case] = float(np.mean([dice(mask, r) for r in readers.values()]))
    rows = []
    for case, (stir, region, readers) in cases.items():
        others = [c for c in CASES if c != case]
        margin = max(MARGINS, key=lambda m: np.mean([by_margin[m][c] for c in others]))
        mask = masks[margin, case]
        pairs = list(itertools.combinations(SESSIONS, 2))
        reader_dice = np.mean([dice(readers[a], readers[b]) for a, b in pairs])
        reader_vs = np.mean([volume_similarity(readers[a], readers[b]) for a, b in pairs])
        method_dice = [dice(mask, readers[s]) for s in SESSIONS]
        method_vs = np.mean([volume_similarity(mask, readers[s]) for s in SESSIONS])
        volumes = [stir.volume_ml(readers[s]) for s in SESSIONS]
        rows.append((case, margin, reader_dice, method_dice, reader_vs, method_vs, min(volumes), max(volumes),
                     stir.volume_ml(mask)))
    print("Bone marrow oedema on STIR inside the manual disease region, 5 cases x 4 reader sessions")
    print(f"{'case':6} {'margin':>6} {'reader-reader Dice':>19} {'method-reader Dice (R11 R12 R21 R22)':>38} "
          f"{'VS readers':>10} {'VS method':>9} {'readers mL':>13} {'method mL':>9}")
    for case, margin, rd, md, rvs, mvs, vmin, vmax, vm in rows:
        inside = "in" if vmin <= vm <= vmax else "out"
        print(f"{case:6} {margin:6.1f} {rd:19.3f} {np.mean(md):10.3f} ({' '.join(f'{d:.2f}' for d in md)})"
              f"{'':4} {rvs:10.3f} {mvs:9.3f} {vmin:6.2f}-{vmax:<6.2f} {vm:6.2f} {inside}")
    print(f"{'mean':6} {'':6} {np.mean([r[2] for r in rows]):19.3f} {np.mean([np.mean(r[3]) for r in rows]):10.3f}"
          f"{'':30} {np.mean([r[4] for r in rows]):10.3f} {np.mean([r[5] for r in rows]):9.3f}")
    print("margin = reference mode + margin x lower spread, chosen on the other four cases (leave-one-case-out);")
    print("target: method-reader Dice >= reader-reader Dice, method volume within the readers' range.")
    print("Agreement of each margin, all cases (mean Dice):",
          ", ".join(f"{m}: {np.mean(list(v.values())):.3f}" for m, v in by_margin.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
