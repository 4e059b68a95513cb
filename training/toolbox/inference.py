"""One compiled inference call per model, as the serving path runs it."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

_COMPILED: dict[int, tuple[Any, Callable]] = {}


def compiled_inference(model) -> Callable[[np.ndarray], Any]:
    """`model(x, training=False)` traced once for any batch size; returns NumPy (a dict for dict outputs).

    Cached per model object, so repeated evaluation calls reuse the trace.
    """
    cached = _COMPILED.get(id(model))
    if cached is None or cached[0] is not model:
        import tensorflow as tf  # deferred: importing this module must not start TensorFlow

        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])

        def call(x):
            out = fn(tf.convert_to_tensor(x, tf.float32))
            return {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else np.asarray(out)

        cached = (model, call)
        _COMPILED[id(model)] = cached
    return cached[1]
