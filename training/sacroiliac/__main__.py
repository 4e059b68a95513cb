"""Train, evaluate and ship the sacroiliac (AS) models on synthetic phantoms.

    python -m training.sacroiliac [--quick] [--models ID,ID] [--out models/] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.sacroiliac.model import ALL_MODELS
from training.sacroiliac.pipeline import reevaluate, run
from training.toolbox.runs import COMMITTED_MODELS_DIR


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.sacroiliac", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (tests, notebook quick mode); needs a non-models/ --out")
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated ids (default: all four)")
    ap.add_argument("--out", default=None, help="output directory (default models/, or a temp dir with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="no training: re-evaluate the shipped models in --out and refresh their metrics and cards")
    a = ap.parse_args(argv)
    ids = [m.strip() for m in a.models.split(",") if m.strip()]
    try:
        if a.evaluate_only:
            summary = reevaluate(ids, a.out or COMMITTED_MODELS_DIR)
            print(json.dumps({k: v["metrics"] for k, v in summary["models"].items()}, indent=1))
            return 0
        summary = run(ids, a.out, quick=a.quick, seed=a.seed, verbose=a.verbose)
    except ValueError as exc:
        ap.error(str(exc))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in summary["models"].items()},
                     indent=2))
    print(f"registry: {Path(summary['out_dir']) / 'registry.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
