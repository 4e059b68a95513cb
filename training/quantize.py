"""Int8 storage for convolution kernels, for shipping large models in a small file.

Keras' own `model.quantize("int8")` covers Dense, EinsumDense and Embedding only. Here
`Int8Conv2D` and `Int8Conv2DTranspose` are the Keras layers with the kernel held as an int8
variable plus one float32 scale per output channel (symmetric max-abs: w ~= q * scale with
|q| <= 127); `call` dequantizes the kernel, so the model runs in float32 exactly as before and
only the stored precision changes. Biases stay float.

`quantize_convolutions(model)` converts a trained functional or sequential model: a clone with
every Conv2D / Conv2DTranspose swapped for its int8 layer (same names and configuration), the
kernels quantized, and all other weights (BatchNorm, biases, Dense, ...) copied unchanged.
Each scale is rounded up to a float16-representable value, so `training.export.save_for_shipping`
stores it as float16 without loss and the int8 kernels stay int8 (about 4x smaller than float32).

The layers are registered as `jointscan>Int8Conv2D` / `jointscan>Int8Conv2DTranspose`;
`training.architectures.custom_objects()` returns them for `keras.models.load_model`.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


class _Int8Kernel:
    """Mixin for a Keras convolution: an int8 kernel and per-output-channel scales replace the float kernel."""

    _out_axis: int   # kernel axis that indexes the output channels (filters)

    def _kernel_shape(self, input_channel: int) -> tuple[int, ...]:
        raise NotImplementedError

    def build(self, input_shape):
        channel_axis = -1 if self.data_format == "channels_last" else 1
        input_channel = input_shape[channel_axis]
        self.input_spec = layers.InputSpec(min_ndim=self.rank + 2, axes={channel_axis: input_channel})
        self.compute_output_shape(input_shape)   # validates the shape, as the float layers do
        self.kernel_int8 = self.add_weight(name="kernel", shape=self._kernel_shape(input_channel),
                                           initializer="zeros", dtype="int8", trainable=False)
        self.kernel_scale = self.add_weight(name="kernel_scale", shape=(self.filters,), initializer="ones",
                                            dtype="float32", trainable=False)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                        trainable=True, dtype=self.dtype)
        self.built = True

    @property
    def kernel(self):
        """The dequantized float kernel (q * scale), what the float layer's `call` convolves with."""
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        shape = [1] * len(self.kernel_int8.shape)
        shape[self._out_axis] = self.filters
        scale = ops.reshape(ops.cast(self.kernel_scale, self.compute_dtype), shape)
        return ops.multiply(ops.cast(self.kernel_int8, self.compute_dtype), scale)

    def _stored_variables(self) -> list:
        return [self.kernel_int8, self.kernel_scale] + ([self.bias] if self.use_bias else [])

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, variable in enumerate(self._stored_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        variables = self._stored_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(f"Layer '{self.name}' expects {len(variables)} variables "
                             f"(int8 kernel, scales, bias) but the file has {len(store.keys())}.")
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

    def set_quantized(self, float_kernel, bias=None) -> None:
        """Quantize `float_kernel` (the float layer's kernel) into this built layer; copy `bias`."""
        q, scale = quantize_kernel(float_kernel, self._out_axis)
        self.kernel_int8.assign(q)
        self.kernel_scale.assign(scale)
        if self.use_bias:
            self.bias.assign(np.asarray(bias, np.float32))


@keras.saving.register_keras_serializable(package="jointscan")
class Int8Conv2D(_Int8Kernel, layers.Conv2D):
    """`keras.layers.Conv2D` with an int8 kernel and a float32 scale per output channel."""

    _out_axis = -1   # kernel (kh, kw, in // groups, filters)

    def _kernel_shape(self, input_channel: int) -> tuple[int, ...]:
        if input_channel % self.groups:
            raise ValueError(f"{input_channel} input channels are not divisible by groups={self.groups}")
        return tuple(self.kernel_size) + (input_channel // self.groups, self.filters)


@keras.saving.register_keras_serializable(package="jointscan")
class Int8Conv2DTranspose(_Int8Kernel, layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with an int8 kernel and a float32 scale per output channel."""

    _out_axis = -2   # kernel (kh, kw, filters, in)

    def _kernel_shape(self, input_channel: int) -> tuple[int, ...]:
        return tuple(self.kernel_size) + (self.filters, input_channel)


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
            new.set_quantized(old.kernel, old.bias if old.use_bias else None)
        elif old.weights:
            new.set_weights(old.get_weights())
    return converted
