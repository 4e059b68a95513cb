"""The model registry: reads models/registry.json, checks files, loads lazily, caches.

One registry per process. `status()` is cheap (file present, checksum right)
and never imports TensorFlow; `load()` imports Keras on first use, verifies
the checksum again on the bytes it loads, and caches the model behind a lock
per model id so concurrent requests load it once. A missing or damaged file
disables that model only, with a message saying why.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# TensorFlow and Keras (and imaging.layers, which pulls Keras) are imported inside the functions that
# load or run a model, not here: reading the registry and `status()` stay cheap, and a process that
# only checks models never pays for TensorFlow. Flask is imported only by `current_registry()`: the
# tasks and training import this module and never touch Flask.

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"


# What a user who is not an administrator reads about an unusable model: ModelRegistry.problem and
# ModelUnavailable's message name the file and the command that rebuilds it, which is for administrators
# (the models pages) and the log only.
UNAVAILABLE_FOR_USERS = "its file is missing, damaged or cannot be loaded; an administrator can see the details"


class ModelUnavailable(RuntimeError):
    """A model cannot be used; `message` says why, for administrators and the log (users read
    UNAVAILABLE_FOR_USERS)."""

    def __init__(self, model_id: str, message: str):
        super().__init__(f"{model_id}: {message}")
        self.model_id = model_id
        self.message = message


@dataclass(frozen=True)
class ModelEntry:
    id: str
    task: str
    role: str
    version: str
    title: str
    file: str
    sha256: str
    input: dict[str, Any]
    outputs: list[str]
    architecture: str = ""
    reference: bool = False
    default: bool = False
    gradcam_layer: str | list[str] | None = None     # several: an ensemble's members (one map together)
    ood: dict[str, Any] | None = None                # the training-data check (tasks.ood), when declared
    calibration: dict[str, Any] | None = None        # head -> temperature spec (tasks.calibration), when fitted
    mask_threshold: float = 0.5                      # a segmenter's output above it is in the mask (chosen on held-out data)
    size_bytes: int | None = None
    params: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    card: str | None = None
    description: str = ""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "ModelEntry":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.input["shape"])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _numpy(out: Any) -> Any:
    if isinstance(out, dict):
        return {k: v.numpy() for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [v.numpy() for v in out]
    return out.numpy()


class LoadedModel:
    """A Keras model ready to serve: one compiled inference call, Grad-CAM models built once."""

    def __init__(self, entry: ModelEntry, keras_model: Any, path: Path):
        import tensorflow as tf

        self.entry = entry
        self.path = path   # the verified file; companions (e.g. a phenotype catalogue) sit beside it
        self.model = keras_model
        self._tf = tf
        self._infer = tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True)
        self._gradcam_models: dict[tuple[str, ...], Any] = {}
        self._feature_calls: dict[tuple[str, str, Any], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, batch) -> Any:
        """Batch in, outputs out (array, or dict / list of arrays for multi-head models) as NumPy."""
        return _numpy(self._infer(self._tf.convert_to_tensor(batch, dtype=self._tf.float32)))

    def features(self, batch, layer_name: str, reduce: Callable[[Any], Any]):
        """`reduce` of the named layer's output for a batch, as NumPy: the layer's sub-model only, compiled
        once per (layer, reduce). For fitting a check over many inputs; serving uses `call_with_features`."""
        import keras

        key = ("features", layer_name, reduce)
        with self._lock:
            if key not in self._feature_calls:
                sub = keras.Model(self.model.inputs, self.model.get_layer(layer_name).output)
                self._feature_calls[key] = self._tf.function(lambda x: reduce(sub(x, training=False)),
                                                             reduce_retracing=True)
            call = self._feature_calls[key]
        return call(self._tf.convert_to_tensor(batch, dtype=self._tf.float32)).numpy()

    def call_with_features(self, batch, layer_name: str, reduce: Callable[[Any], Any]) -> tuple[Any, Any]:
        """The outputs (as `__call__` gives them) and `reduce` of the named layer's output, from one compiled
        call: a check on an inner layer then costs only `reduce`, not a second pass through the model."""
        import keras

        key = ("call", layer_name, reduce)
        with self._lock:
            if key not in self._feature_calls:
                inner = self.model.get_layer(layer_name).output
                both = keras.Model(self.model.inputs, [self.model.output, inner])

                def call(x):
                    out, maps = both(x, training=False)
                    return out, reduce(maps)

                self._feature_calls[key] = self._tf.function(call, reduce_retracing=True)
            call = self._feature_calls[key]
        out, reduced = call(self._tf.convert_to_tensor(batch, dtype=self._tf.float32))
        return _numpy(out), reduced.numpy()

    def gradcam_model(self, layer_name: str | Sequence[str] | None = None):
        """A model returning (feature maps of `layer_name`, outputs), built once per layer. Several layer
        names (an ensemble's members) give a list of feature maps, which imaging.gradcam combines."""
        import keras

        name = layer_name or self.entry.gradcam_layer
        if not name:
            raise ModelUnavailable(self.entry.id, "this model declares no Grad-CAM layer")
        names = (name,) if isinstance(name, str) else tuple(name)
        with self._lock:
            if names not in self._gradcam_models:
                maps = [self.model.get_layer(n).output for n in names]
                self._gradcam_models[names] = keras.Model(self.model.inputs,
                                                          [maps[0] if len(maps) == 1 else maps, self.model.output])
            return self._gradcam_models[names]


class ModelRegistry:
    def __init__(self, models_dir: Path | str = DEFAULT_MODELS_DIR, registry_file: str = "registry.json"):
        self.models_dir = Path(models_dir)
        self.registry_path = self.models_dir / registry_file
        self._entries = self._read_entries()
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {mid: threading.Lock() for mid in self._entries}
        self._status_cache: dict[str, tuple[float, int, str | None]] = {}

    def _read_entries(self) -> dict[str, ModelEntry]:
        if not self.registry_path.exists():
            return {}
        raw = json.loads(self.registry_path.read_text())
        entries = [ModelEntry.from_json(m) for m in raw.get("models", [])]
        return {e.id: e for e in entries}

    # -- listing -----------------------------------------------------------
    def entries(self, task: str | None = None) -> list[ModelEntry]:
        found = [e for e in self._entries.values() if task is None or e.task == task]
        return sorted(found, key=lambda e: (e.task, e.role, e.reference, e.id))

    def get(self, model_id: str) -> ModelEntry | None:
        return self._entries.get(model_id)

    def path_of(self, entry: ModelEntry) -> Path:
        return self.models_dir / entry.file

    def card_text(self, entry: ModelEntry) -> str | None:
        if not entry.card:
            return None
        path = (self.models_dir / entry.card).resolve()
        if self.models_dir.resolve() not in path.parents or not path.exists():
            return None
        return path.read_text()

    # -- health ------------------------------------------------------------
    def problem(self, model_id: str) -> str | None:
        """None when the model can be used, else a sentence saying why not (cached on file mtime/size).
        The sentence names files and commands: for administrators and the log (see UNAVAILABLE_FOR_USERS)."""
        entry = self._entries.get(model_id)
        if entry is None:
            return "no such model in the registry"
        path = self.path_of(entry)
        if not path.exists():
            return f"model file {entry.file} is missing; regenerate it with: {entry.training.get('command', 'its training command')}"
        stat = path.stat()
        cached = self._status_cache.get(model_id)
        if cached and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
        problem = None
        if sha256_of(path) != entry.sha256:
            problem = f"model file {entry.file} is damaged or was replaced (checksum mismatch)"
        self._status_cache[model_id] = (stat.st_mtime, stat.st_size, problem)
        return problem

    # -- loading -----------------------------------------------------------
    def load(self, model_id: str) -> LoadedModel:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelUnavailable(model_id, "no such model in the registry")
        cached = self._loaded.get(model_id)
        if cached is not None:
            return cached
        with self._locks[model_id]:
            cached = self._loaded.get(model_id)
            if cached is not None:
                return cached
            loaded = self._load_verified(entry)
            self._loaded[model_id] = loaded
            return loaded

    def _load_verified(self, entry: ModelEntry) -> LoadedModel:
        path = self.path_of(entry)
        try:
            data = path.read_bytes()
        except OSError:
            raise ModelUnavailable(entry.id, self.problem(entry.id) or f"model file {entry.file} cannot be read")
        # Check the very bytes we load, so a file swapped between check and load is caught.
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ModelUnavailable(entry.id, f"model file {entry.file} is damaged or was replaced (checksum mismatch)")
        import keras

        from imaging.layers import custom_objects  # layers the architectures define

        with tempfile.NamedTemporaryFile(suffix=".keras") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                model = keras.models.load_model(tmp.name, compile=False, custom_objects=custom_objects())
            except Exception as exc:  # a file with the right checksum but unloadable: a registry error
                raise ModelUnavailable(entry.id, f"model file {entry.file} could not be loaded ({type(exc).__name__})") from exc
        return LoadedModel(entry, model, path)

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded


def current_registry() -> ModelRegistry:
    """The registry of the application handling the current request or CLI command."""
    from flask import current_app

    return current_app.extensions["jointscan.registry"]
