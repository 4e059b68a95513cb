"""The whole hand run: generate the phantoms, train the chosen models (reusing the others from --out when
asked), ship, evaluate and register them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from training.hand.config import ALL_MODELS, DETECTOR_ID, FULL_BUDGET, QUICK_BUDGET
from training.hand.data import generate_data
from training.toolbox.runs import is_committed_models_dir, json_safe


def run(out_dir: Path, quick: bool = False, patients: int | None = None, seed: int = 0,
        model_ids: Sequence[str] = ALL_MODELS, cache: Path | None = None, log: Callable[[str], None] = print,
        reuse: bool = False, init_detector: Path | None = None) -> dict[str, dict[str, Any]]:
    budget = QUICK_BUDGET if quick else FULL_BUDGET
    n = patients or budget.patients
    out_dir = Path(out_dir)
    if quick and is_committed_models_dir(out_dir):
        raise SystemExit("--quick refuses to write tiny models into the committed models/ directory")
    t0 = time.perf_counter()
    data = generate_data(n, log=log, cache=cache, n_children=budget.children)
    # Imported once the phantoms exist: these load TensorFlow, and the phantom workers are forked only
    # while it is not loaded.
    import keras

    from training.hand.export import export_models
    from training.hand.train import train_detector, train_scorer

    models, infos = {}, {}
    for mid in ALL_MODELS:
        if mid in model_ids:
            if mid == DETECTOR_ID:
                models[mid], infos[mid] = train_detector(data, budget, seed, log, quick, init=init_detector)
            else:
                models[mid], infos[mid] = train_scorer(mid, data, budget, seed, log, quick)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{mid}.train.json").write_text(json.dumps(json_safe(infos[mid]), indent=1))
        elif reuse and (out_dir / f"{mid}.keras").exists():
            models[mid] = keras.models.load_model(out_dir / f"{mid}.keras", compile=False)
            infos[mid] = _training_info(out_dir, mid)
    entries = export_models(models, infos, data, out_dir, quick, seed, log)
    for mid in entries:                                   # recorded in the registry now
        (out_dir / f"{mid}.train.json").unlink(missing_ok=True)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return entries


def _training_info(out_dir: Path, mid: str) -> dict[str, Any]:
    """What training recorded for a model being reused: its <id>.train.json, else its registry entry."""
    side = Path(out_dir) / f"{mid}.train.json"
    if side.exists():
        info = json.loads(side.read_text())
    else:
        reg = json.loads((Path(out_dir) / "registry.json").read_text())
        entry = next(m for m in reg["models"] if m["id"] == mid)
        info = {k: v for k, v in entry.get("training", {}).items() if k not in ("data", "seed", "command", "patients")}
    return info
