"""Input: where a functional model's graph starts."""
from ..backend import floatx
from .base import KerasTensor, Layer, check_real_array, is_int


class InputLayer(Layer):
    """Holds the expected input shape; a model checks arrays against it.

    ``batch_shape`` includes the batch axis (None unless fixed).
    """

    def __init__(self, batch_shape, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.batch_shape = tuple(batch_shape)
        self.call_outputs.append(KerasTensor(self.batch_shape, self.dtype, self))
        self.built = True

    def check(self, x, model_name):
        """Raise a TypeError naming this layer unless ``x`` is an array of numbers
        (float, integer or bool, as Keras takes), a ValueError if its shape does not fit."""
        check_real_array(x, f"model {model_name!r}: input {self.name!r}")
        shape = tuple(x.shape)
        fits = len(shape) == len(self.batch_shape) and all(
            expected is None or expected == actual for expected, actual in zip(self.batch_shape, shape))
        if not fits:
            raise ValueError(f"model {model_name!r}: input layer {self.name!r} expects arrays of "
                             f"shape {self.batch_shape}, got {shape}")


def Input(shape, batch_size=None, name=None, dtype=None):
    """A symbolic input of ``shape`` (without the batch axis), as ``keras.Input``."""
    shape = (shape,) if is_int(shape) else shape
    if not isinstance(shape, (tuple, list)) or not all(size is None or (is_int(size) and size > 0)
                                                       for size in (*shape, batch_size)):
        raise ValueError(f"Input{f' {name!r}' if name else ''}: shape must be a tuple of positive "
                         f"ints or None (unknown sizes), without the batch axis, e.g. (32, 32, 3), "
                         f"and batch_size a positive int or None; got shape={shape!r}, "
                         f"batch_size={batch_size!r}")
    layer = InputLayer((batch_size, *(int(size) if size is not None else None for size in shape)),
                       name=name, dtype=dtype or floatx())
    return layer.output
