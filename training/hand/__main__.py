"""Train, evaluate and ship the hand models on phantoms.

    python -m training.hand [--quick] [--out models/] [--patients 1000] [--models ID,ID] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from training.hand.config import ALL_MODELS
from training.hand.pipeline import run
from training.toolbox.runs import COMMITTED_MODELS_DIR


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.hand",
                                 description="Train, evaluate and ship the hand models on phantoms.")
    ap.add_argument("--quick", action="store_true", help="tiny models, a few patients, seconds")
    ap.add_argument("--out", type=Path, default=None, help="models directory (default: models/, or a temp dir with --quick)")
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated ids to train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="cache the generated phantoms here (development)")
    ap.add_argument("--reuse", action="store_true",
                    help="load the models not being trained from --out and evaluate/ship everything together")
    ap.add_argument("--init-detector", type=Path, default=None,
                    help="a detector file that stands for the detector's first stage (adult phantoms); only its "
                         "second stage, with children and the wide augmentation, is trained")
    a = ap.parse_args(argv)
    out = a.out or (Path(tempfile.mkdtemp(prefix="hand_quick_")) if a.quick else COMMITTED_MODELS_DIR)
    ids = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = set(ids) - set(ALL_MODELS)
    if unknown:
        ap.error(f"unknown model ids: {', '.join(sorted(unknown))}")
    run(out, quick=a.quick, patients=a.patients, seed=a.seed, model_ids=ids, cache=a.cache, reuse=a.reuse,
        init_detector=a.init_detector, log=lambda s: print(s, flush=True))
    print(f"models in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
