"""How much the knee phenotype clusters depend on the graders' training seeds, single graders and ensembles.

    python benchmarks/knee_phenotype_seeds.py [--seeds 0,1,2,3,4,5] [--max-members 3] [--n 1500]

On VALIDATION phantoms (seeds 100,400 and up: the set the clustering constants were chosen on, never the
benchmark's test phantoms), for every combination of up to --max-members phantom graders (training.knee.phantom_grader,
trained here when absent, a few minutes each): the ARI of the clusters within each predicted grade against
the hidden phenotypes (noise counted as a group), and per ensemble size how many combinations reach
ARI >= 0.8 at every grade. An ensemble is evaluated as the shipped one computes it (training.knee.ensemble):
heads averaged, each member's embedding scaled by `embedding_scale` over these knees and set side by side,
each member's grade directions removed; the clustering is training.knee.phenotypes.build_catalogue.
Each grader embeds the phantoms once. Prints a table and exits 0.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from scipy.linalg import block_diag  # noqa: E402

from benchmarks.knee_phenotypes import finish, grade_aris  # noqa: E402
from tasks.knee import decide  # noqa: E402
from training.knee.ensemble import embedding_scale, severity_basis_of  # noqa: E402
from training.knee.evaluate import best_head, figures, predict_tta  # noqa: E402
from training.knee.phantom import phantom_set  # noqa: E402
from training.knee.phantom_grader import load_or_train  # noqa: E402
from training.knee.phenotypes import build_catalogue  # noqa: E402
from training.knee.train import set_threads  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5", help="training seeds of the phantom graders")
    ap.add_argument("--max-members", type=int, default=3)
    ap.add_argument("--n", type=int, default=1500, help="validation phantoms (after the first 400)")
    args = ap.parse_args(argv)

    set_threads()
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    knees, phen, _ = phantom_set("val", args.n, offset=400)
    preds, bases = {}, {}
    for s in seeds:
        model = load_or_train(seed=s)
        preds[s], bases[s] = predict_tta(model, knees.images), severity_basis_of(model)
    print(f"{args.n} validation phantoms; graders {', '.join(map(str, seeds))}; ARI per predicted grade, "
          "noise counted as a group")
    print(f"{'graders':>10} {'head':>10}  " + " ".join(f"{'KL ' + str(g):>6}" for g in range(5)) + f" {'worst':>6}")
    by_size: dict[int, list[tuple[float, float]]] = {}
    for size in range(1, args.max_members + 1):
        for combo in itertools.combinations(seeds, size):
            pred = {k: np.mean([preds[s][k] for s in combo], axis=0) for k in ("kl_value", "kl_coral")}
            head = best_head(figures(knees.grades, pred))
            grades, _ = decide(pred["kl_value"], pred["kl_coral"], head)
            E = np.concatenate([preds[s]["embedding"] * embedding_scale(preds[s]["embedding"], bases[s])
                                for s in combo], axis=1)
            cat = build_catalogue(E, grades, basis=block_diag(*[bases[s] for s in combo]))
            aris = grade_aris(phen, grades, cat)
            worst = min(aris.values())
            by_size.setdefault(size, []).append((worst, min(a for g, a in aris.items() if g > 0)))
            print(f"{','.join(map(str, combo)):>10} {head:>10}  "
                  + " ".join(f"{aris[g]:>6.3f}" if g in aris else f"{'-':>6}" for g in range(5)) + f" {worst:>6.3f}",
                  flush=True)
    print("\nper ensemble size: combinations reaching ARI >= 0.8 at every grade; mean and lowest worst-grade ARI; "
          "lowest ARI at KL 1-4")
    for size, rows in by_size.items():
        w, above0 = np.array(rows).T
        print(f"  {size} grader{'s' if size > 1 else ' '}: {int((w >= 0.8).sum())} of {len(w)}, mean {w.mean():.3f}, "
              f"lowest {w.min():.3f}; KL 1-4 lowest {above0.min():.3f}")
    return finish(t0, "benchmarks/knee_phenotype_seeds.py")


if __name__ == "__main__":
    raise SystemExit(main())
