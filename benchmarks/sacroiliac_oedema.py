"""Bone marrow oedema on real sacroiliac STIR against the readers, beside the readers against each other.

On the 5 cases of ../shared/data/sij_mri_nifti with oedema masks from two readers who each segmented
twice (4 sessions), inside the manual disease region:
  * readers vs readers: mean Dice and volume similarity over the 6 pairs of sessions, per case;
  * the intensity method (automatic normal-marrow reference, tasks.sacroiliac_inflammation) against
    each of the 4 sessions, with its margin chosen by leave-one-case-out cross-validation (the margin
    used on a case is the one that agreed best with the readers on the other four cases);
  * the lesion volume in mL beside the readers' range.

    .venv/bin/python benchmarks/sacroiliac_oedema.py [--data ../shared/data] [--learned /tmp/jointscan_sij_oedema]

With --learned (the --work folder of `python -m training.sacroiliac.oedema`), the learned segmenter's
leave-one-case-out figures from the same cases are printed beside (training.sacroiliac.oedema computes both).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.sacroiliac.oedema import SESSIONS, intensity_cross_validated, load_cases  # noqa: E402
from training.toolbox.runs import data_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir()), help="the real-data folder (default: JOINTSCAN_DATA_DIR "
                                                                 "or ../shared/data)")
    parser.add_argument("--learned", type=Path, default=None, help="a training.sacroiliac.oedema --work folder")
    args = parser.parse_args()
    root = Path(args.data) / "sij_mri_nifti"
    if not root.is_dir():
        print(f"skipped: {root} not found (set JOINTSCAN_DATA_DIR)")
        return 0
    result = intensity_cross_validated(load_cases(root))
    learned = {}
    if args.learned is not None and (args.learned / "cross_validation.json").exists():
        learned = json.loads((args.learned / "cross_validation.json").read_text())["per_case"]
    print(f"Bone marrow oedema on STIR inside the manual disease region, {len(result['per_case'])} cases x "
          f"{len(SESSIONS)} reader sessions")
    print(f"{'case':6} {'margin':>6} {'reader-reader Dice':>19} {'method-reader Dice (R11 R12 R21 R22)':>38} "
          f"{'VS readers':>10} {'VS method':>9} {'readers mL':>13} {'method mL':>9}" + ("  learned Dice, mL" if learned
                                                                                          else ""))
    for case, r in result["per_case"].items():
        inside = "in" if r["within_readers"] else "out"
        extra = (f"  {learned[case]['dice_mean']:.3f}, {learned[case]['ml']:.2f}"
                 f" {'in' if learned[case]['within_readers'] else 'out'}") if case in learned else ""
        print(f"{case:6} {r['margin']:6.1f} {r['reader_dice_mean']:19.3f} {r['dice_mean']:10.3f} "
              f"({' '.join(format(r['dice'][session], '.2f') for session in SESSIONS)})"
              f"{'':4} {r['reader_vs_mean']:10.3f} {r['vs_mean']:9.3f} {r['readers_ml'][0]:6.2f}-"
              f"{r['readers_ml'][1]:<6.2f} {r['ml']:6.2f} {inside}{extra}")
    s = result["summary"]
    print(f"{'mean':6} {'':6} {s['reader_dice_mean']:19.3f} {s['dice_mean']:10.3f}{'':30} {s['reader_vs_mean']:10.3f} "
          f"{s['vs_mean']:9.3f}   within the readers' range: {s['within_readers']} of {s['n']}")
    if learned:
        print(f"learned segmenter (leave-one-case-out): mean Dice {np.mean([v['dice_mean'] for v in learned.values()]):.3f}, "
              f"VS {np.mean([v['vs_mean'] for v in learned.values()]):.3f}, within the readers' range "
              f"{sum(v['within_readers'] for v in learned.values())} of {len(learned)}")
    print("margin = reference mode + margin x lower spread, chosen on the other four cases (leave-one-case-out);")
    print("target: method-reader Dice >= reader-reader Dice, method volume within the readers' range.")
    print("Agreement of each margin, all cases (mean Dice):",
          ", ".join(f"{m}: {v:.3f}" for m, v in result["by_margin"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
