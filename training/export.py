"""Shipping trained models: compact `.keras` files, registry entries and model cards (all tasks).

`save_for_shipping` writes a normal `.keras` archive and then rewrites its
`model.weights.h5` with every float32 dataset stored as float16 (the zip
DEFLATE-compressed). Keras assigns the stored values to its float32 variables
on load, so the model loads with plain `keras.models.load_model` and runs in
float32; only the stored precision is halved. Integer datasets (int8 weights
of quantized layers: Keras' `model.quantize("int8")` for Dense, or the int8
convolutions of `training.quantize`) are kept as they are. Always evaluate the
*reloaded* file, so published figures describe what ships.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from model_loader import sha256_of

WEIGHTS_NAME = "model.weights.h5"
ENTRY_ORDER = ("id", "task", "role", "version", "title", "architecture", "reference", "default", "file",
               "sha256", "size_bytes", "params", "input", "outputs", "gradcam_layer", "training", "metrics",
               "card", "description")


# -- files -------------------------------------------------------------------------
def save_for_shipping(model, path: str | os.PathLike, float16: bool = True) -> Path:
    """Save `model` to `path` (.keras) for inference; returns the path.

    The file holds the architecture and weights only: the optimizer state and the compile
    configuration (losses, metrics) are dropped, so it loads with `compile=False` and no training
    code. With `float16`, float32 weights are stored as float16 (loaded back as float32).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.keras"
        model.save(raw)
        with zipfile.ZipFile(raw) as zin:
            names = zin.namelist()
            members = {n: zin.read(n) for n in names}
        config = json.loads(members["config.json"])
        config.pop("compile_config", None)
        members["config.json"] = json.dumps(config).encode()
        src, dst = Path(tmp) / "src.h5", Path(tmp) / "dst.h5"
        src.write_bytes(members[WEIGHTS_NAME])
        with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
            _copy_attrs(fin, fout)
            _copy_group(fin, fout, float16=float16, skip=("optimizer",))
        members[WEIGHTS_NAME] = dst.read_bytes()
        out = Path(tmp) / "out.keras"
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zout:
            for n in names:
                zout.writestr(n, members[n])
        shutil.copyfile(out, path)
    return path


def _copy_attrs(src, dst) -> None:
    for k, v in src.attrs.items():
        dst.attrs[k] = v


def _copy_group(src, dst, float16: bool = True, skip: tuple[str, ...] = ()) -> None:
    for key, item in src.items():
        if key in skip:
            continue
        if isinstance(item, h5py.Group):
            grp = dst.create_group(key)
            _copy_attrs(item, grp)
            _copy_group(item, grp, float16)
        else:
            data = item[()]
            if float16 and isinstance(data, np.ndarray) and data.dtype == np.float32:
                data = data.astype(np.float16)
            elif float16 and isinstance(data, np.float32):
                data = np.float16(data)
            ds = dst.create_dataset(key, data=data)
            _copy_attrs(item, ds)


def sha256_file(path: str | os.PathLike) -> str:
    return sha256_of(Path(path))   # the loader verifies with the same function


_FLOAT16_NOTE = "weights stored as float16 (loaded as float32)"


def storage_note(path: str | os.PathLike) -> str:
    """How a shipped file stores its weights, for its model card (read from the file's config)."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return _FLOAT16_NOTE
    classes, keras_int8 = set(), set()   # all layer classes; those quantized by Keras' model.quantize("int8")
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            classes.add(item.get("class_name"))
            dtype = item["config"].get("dtype") if isinstance(item.get("config"), dict) else None
            if isinstance(dtype, dict) and dtype.get("class_name") == "QuantizedDTypePolicy" \
                    and (dtype.get("config") or {}).get("mode") == "int8":
                keras_int8.add(item.get("class_name"))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    parts = []
    if classes & {"Int8Conv2D", "Int8Conv2DTranspose"}:
        parts.append("convolution kernels stored int8 with one scale per output channel "
                     "(`training.quantize`, dequantized to float32 when run)")
    if keras_int8:
        parts.append(f"{'/'.join(sorted(keras_int8))} kernels stored int8 (Keras `model.quantize('int8')`)")
    if not parts:
        return _FLOAT16_NOTE
    return ", ".join(parts) + ", other weights stored as float16 (loaded as float32)"


# -- registry ----------------------------------------------------------------------
def _ordered(entry: dict[str, Any]) -> dict[str, Any]:
    known = [k for k in ENTRY_ORDER if k in entry]
    return {**{k: entry[k] for k in known}, **{k: entry[k] for k in sorted(entry) if k not in ENTRY_ORDER}}


def register_model(models_dir: str | os.PathLike, entry: dict[str, Any], model=None) -> dict[str, Any]:
    """Upsert `entry` (by id) into `<models_dir>/registry.json`; returns the stored entry.

    Computes sha256 and size_bytes from `<models_dir>/<entry["file"]>`, and params from `model`
    when given (else keeps entry["params"], else loads the file to count them).
    """
    models_dir = Path(models_dir)
    file_path = models_dir / entry["file"]
    entry = dict(entry)
    entry["sha256"] = sha256_file(file_path)
    entry["size_bytes"] = file_path.stat().st_size
    if model is not None:
        entry["params"] = model.count_params()
    elif entry.get("params") is None:
        import keras  # deferred: registering a model with known params must not start TensorFlow

        from imaging.layers import custom_objects

        entry["params"] = keras.models.load_model(file_path, compile=False,
                                                  custom_objects=custom_objects()).count_params()
    entry.setdefault("card", f"cards/{entry['id']}.md")
    registry_path = models_dir / "registry.json"
    # Several trainings may finish at once: serialise the read-modify-write so no entry is lost.
    with open(models_dir / ".registry.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(registry_path.read_text()) if registry_path.exists() else {"models": []}
        models = [m for m in data.get("models", []) if m.get("id") != entry["id"]]
        models.append(_ordered(entry))
        data["models"] = sorted(models, key=lambda m: m["id"])
        tmp = registry_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(registry_path)
    return entry


# -- model cards -------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def metrics_table(rows: dict[str, dict[str, Any]], keys: Iterable[str] | None = None) -> str:
    """Markdown table: one column per model (rows = {model_label: {metric: value}})."""
    labels = list(rows)
    if keys is None:
        keys = []
        for r in rows.values():
            keys += [k for k in r if k not in keys]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(rows[m].get(k, "")) for m in labels) + " |")
    return "\n".join(lines)


def write_model_card(models_dir: str | os.PathLike, entry: dict[str, Any],
                     extra_sections: dict[str, str] | None = None) -> Path:
    """Write `<models_dir>/<entry["card"]>` (default cards/<id>.md); returns its path.

    `extra_sections` (title -> Markdown) are expected to include, where they apply: "Training data",
    "Metrics on held-out data" (with baselines/reference beside), "Known failure modes and limits".
    Generic sections (intended use, architecture, inputs, outputs, regenerate) come from `entry`.
    """
    extra = dict(extra_sections or {})
    card_rel = entry.get("card") or f"cards/{entry['id']}.md"
    path = Path(models_dir) / card_rel
    path.parent.mkdir(parents=True, exist_ok=True)
    inp = entry.get("input", {})
    training = entry.get("training", {})
    size = entry.get("size_bytes")
    lines = [
        f"# {entry.get('title', entry['id'])} (`{entry['id']}` v{entry.get('version', '?')})",
        "",
        entry.get("description", ""),
        "",
        "## Intended use",
        "",
        "Research and education only: a demonstration of the JointScan workbench. **Not for clinical use**, "
        "not a medical device, and not validated on patients. Its output must never inform a diagnosis or "
        "treatment decision.",
        "",
        "## Model",
        "",
        f"- Task / role: `{entry.get('task')}` / `{entry.get('role')}`"
        + (" (reference architecture, kept for comparison)" if entry.get("reference") else "")
        + (" (default for its role)" if entry.get("default") else ""),
        f"- Architecture: {entry.get('architecture', '')}",
        f"- Parameters: {entry.get('params', 0):,}" if entry.get("params") is not None else "- Parameters: n/a",
        f"- File: `{entry.get('file')}`" + (f", {size / 1024:.0f} KiB" if size else "")
        + f", {storage_note(Path(models_dir) / entry['file']) if entry.get('file') else _FLOAT16_NOTE}",
        f"- sha256: `{entry.get('sha256', '')}`",
        f"- Input: shape {inp.get('shape')}, channels {inp.get('channels')}, crop `{inp.get('crop')}`",
        f"- Outputs: {', '.join(entry.get('outputs', []))}",
    ]
    if entry.get("gradcam_layer"):
        names = entry["gradcam_layer"]
        lines.append(f"- Grad-CAM layer: `{names}`" if isinstance(names, str) else
                     "- Grad-CAM layers (one map over all): " + ", ".join(f"`{n}`" for n in names))
    lines.append("")
    for title in ("Training data", "Training", "Metrics on held-out data", "Known failure modes and limits"):
        if title in extra:
            lines += [f"## {title}", "", extra.pop(title).strip(), ""]
    for title, body in extra.items():
        lines += [f"## {title}", "", body.strip(), ""]
    lines += [
        "## How to regenerate",
        "",
        "```",
        training.get("command", "(command not recorded)"),
        "```",
        "",
        *_run_summary(training),
        "",
    ]
    text = "\n".join(lines)
    # Sections written by the tools that fit a model's registry blocks (its training-data check, its
    # calibration) survive a rewrite of the card while the entry still declares the block; a retrained
    # model's entry has neither until they are fitted again, and its card then has neither.
    old = path.read_text() if path.exists() else ""
    for block, heading in KEPT_SECTIONS.items():
        start = old.find(heading)
        if entry.get(block) and start >= 0:
            end = old.find("\n## ", start + len(heading))
            text = text.rstrip() + "\n\n" + (old[start:end] if end >= 0 else old[start:]).rstrip() + "\n"
    path.write_text(text)
    return path


# Registry block -> the card section its fitting tool writes (training/ood.py, training/calibration.py).
KEPT_SECTIONS = {"ood": "## Training-data check", "calibration": "## Calibration"}


def _run_summary(training: dict[str, Any]) -> list[str]:
    """Seed, epochs and wall time of the run, or of each member run of an ensemble (with its first stage)."""
    runs = training.get("members") or [training]
    lines = []
    for i, r in enumerate(runs):
        first = r.get("first_stage") or {}
        wall = (r.get("wall_time_s") or 0) + (first.get("wall_time_s") or 0)
        epochs = f"{first['epochs_run']} + {r.get('epochs')}" if first else f"{r.get('epochs')}"
        lines.append(("- " if len(runs) > 1 else "") + (f"Member {i + 1}: " if len(runs) > 1 else "")
                     + f"seed {r.get('seed')}, {epochs} epochs, training wall time {wall:.0f} s"
                     + ("" if len(runs) > 1 else " on the machine that produced this file."))
    if len(runs) > 1:
        lines.append("\n(wall times on the machine that produced this file)")
    return lines

