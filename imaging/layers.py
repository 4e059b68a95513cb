"""Custom Keras layers that served models need to load: convolutions with int8 kernels.

`Int8Conv2D` and `Int8Conv2DTranspose` are the Keras layers with the kernel held as an int8
variable plus one float32 scale per output channel (w ~= q * scale with |q| <= 127); `call`
dequantizes the kernel, so the model runs in float32 and only the stored precision differs.
Biases stay float. Converting a trained model to these layers is training's job
(`training.quantize`).

The layers are registered as `jointscan>Int8Conv2D` / `jointscan>Int8Conv2DTranspose`;
`custom_objects()` returns them for `keras.models.load_model`.
"""
from __future__ import annotations

import keras
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


def custom_objects() -> dict:
    """Custom layers needed to load the saved models (pass to `keras.models.load_model`)."""
    return {keras.saving.get_registered_name(c): c for c in (Int8Conv2D, Int8Conv2DTranspose)}
