"""Small helpers for a training run's records: data folder, paths in commands, JSON-safe figures, logs, finished runs read back."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_MODELS_DIR = REPO_ROOT / "models"


def data_dir() -> Path:
    """The shared data folder: $JOINTSCAN_DATA_DIR, else <repo>/../shared/data."""
    env = os.environ.get("JOINTSCAN_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def inside_repo(path: str | os.PathLike) -> bool:
    return Path(path).resolve().is_relative_to(REPO_ROOT)


def repo_relative(path: str | os.PathLike) -> str:
    """`path` relative to the repository when it lies inside it (as a recorded command shows it), else as given."""
    return str(Path(path).resolve().relative_to(REPO_ROOT)) if inside_repo(path) else str(path)


def is_committed_models_dir(path: str | os.PathLike) -> bool:
    """True for the committed models/ folder, which quick (tiny) runs must never write into."""
    return Path(path).resolve() == COMMITTED_MODELS_DIR.resolve()


def json_safe(d: Any) -> Any:
    """Figures for JSON: NumPy scalars to Python, non-finite floats to None, floats rounded to 4 places."""
    if isinstance(d, dict):
        return {str(k): json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [json_safe(v) for v in d]
    if isinstance(d, (np.floating, float)):
        return None if not np.isfinite(d) else round(float(d), 4)
    if isinstance(d, (np.integer,)):
        return int(d)
    return d


def trained_once(work: Path, model_file: str, config: dict[str, Any], train: Callable[[], Any],
                 log: Callable[[str], None] = print) -> Any:
    """The Keras model of the run in `work`: read back from `work/model_file` when a finished run with the same
    configuration (its run.json's "config") left it there, else `train()` (which continues a stopped run from
    its checkpoint and writes run.json) and saved there. A cross-validation started again skips its finished
    folds this way."""
    import keras

    record_path = work / "run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if (work / model_file).exists() and record.get("config") == json_safe(config):
        log(f"{work.name}: finished earlier, read back")
        return keras.models.load_model(work / model_file, compile=False)
    model = train()
    model.save(work / model_file)
    return model


def file_logger(path: Path) -> Callable[[str], None]:
    """A log function printing time-stamped lines and appending them to `path`."""
    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with path.open("a") as fh:
            fh.write(line + "\n")

    return log
