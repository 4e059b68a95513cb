"""Int8 storage for convolution kernels, for shipping large models in a small file.

Keras' own `model.quantize("int8")` covers Dense, EinsumDense and Embedding only. The int8-kernel
convolution layers live with serving (`imaging.layers`, needed to load a shipped file); here is
the conversion.

`quantize_convolutions(model)` converts a trained functional or sequential model: a clone with
every Conv2D / Conv2DTranspose swapped for its int8 layer (same names and configuration), the
kernels quantized (symmetric max-abs per output channel), and all other weights (BatchNorm,
biases, Dense, ...) copied unchanged. Each scale is rounded up to a float16-representable value,
so `training.export.save_for_shipping` stores it as float16 without loss and the int8 kernels
stay int8 (about 4x smaller than float32).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers

from imaging.layers import Int8Conv2D, Int8Conv2DTranspose

INT8_LAYERS = {layers.Conv2D: Int8Conv2D, layers.Conv2DTranspose: Int8Conv2DTranspose}


def _float16_ceil(x: np.ndarray) -> np.ndarray:
    """The smallest float16-representable values >= x (x >= 0), as float32."""
    x = np.asarray(x, np.float32)
    h = x.astype(np.float16)
    h = np.where(h.astype(np.float32) < x, np.nextafter(h, np.float16(np.inf)), h)
    if not np.isfinite(h).all():
        raise ValueError("kernel values too large for float16 scales")
    return h.astype(np.float32)


def quantize_kernel(kernel, out_axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantization: returns (q int8, scale float32) with kernel ~= q * scale.

    scale = max|w| / 127 over each output channel, rounded up to a float16 value (stored losslessly
    as float16); an all-zero channel gets scale 1 and q = 0.
    """
    k = np.asarray(kernel, np.float32)
    axis = out_axis % k.ndim
    reduce = tuple(i for i in range(k.ndim) if i != axis)
    max_abs = np.abs(k).max(axis=reduce)
    scale = _float16_ceil(max_abs / 127.0)
    scale[scale == 0] = 1.0
    shape = [1] * k.ndim
    shape[axis] = -1
    q = np.clip(np.rint(k / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def set_quantized(layer, float_kernel, bias=None) -> None:
    """Quantize `float_kernel` (the float layer's kernel) into the built int8 `layer`; copy `bias`."""
    q, scale = quantize_kernel(float_kernel, layer._out_axis)
    layer.kernel_int8.assign(q)
    layer.kernel_scale.assign(scale)
    if layer.use_bias:
        layer.bias.assign(np.asarray(bias, np.float32))


def quantize_convolutions(model: keras.Model) -> keras.Model:
    """A copy of the trained `model` with Conv2D / Conv2DTranspose kernels stored int8 (see module doc).

    Layer names (bar an unnamed Input), configuration and every other weight are unchanged; the original
    model is untouched; the copy is for inference (not compiled). Works for functional and sequential
    models whose convolutions sit at the top level.
    """
    def clone(layer):
        cls = INT8_LAYERS.get(type(layer), type(layer))
        return cls.from_config(layer.get_config())

    # Clone an uncompiled view of the same graph: clone_model would otherwise re-compile the copy from the
    # training configuration (custom losses and all), which inference does not need.
    if isinstance(model, keras.Sequential):
        graph = keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    else:
        graph = keras.Model(model.input, model.output, name=model.name)
    converted = keras.models.clone_model(graph, clone_function=clone)
    if len(converted.layers) != len(graph.layers):
        raise ValueError("clone_model changed the layer list; cannot copy the weights across")
    for old, new in zip(graph.layers, converted.layers):   # clone_model keeps the layer order
        if type(old) in INT8_LAYERS:
            if getattr(old, "lora_enabled", False):
                raise ValueError(f"layer {old.name}: merge or disable LoRA before int8 conversion")
            set_quantized(new, old.kernel, old.bias if old.use_bias else None)
        elif old.weights:
            new.set_weights(old.get_weights())
    return converted
