"""Gradient-check every minires layer, the way you would in class.

For each layer: build it in float64, run forward and backward on random data,
and compare every analytic gradient (input and parameters) with centred finite
differences.  A correct backward pass agrees to about 1e-9 or better; a
wrong one shows up as an error near 1.

    python examples/gradcheck_layers.py
"""
import numpy as np

from minires import gradcheck
from minires.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate,
                            Conv2D, Dense, Flatten, GlobalAveragePooling2D, MaxPooling2D,
                            ZeroPadding2D)

rng = np.random.default_rng(0)
image = rng.standard_normal((2, 8, 8, 3))
# Max-pooling needs inputs without ties: a shuffled ramp of distinct values.
ramp = (rng.permutation(image.size).reshape(image.shape) + 0.5) / image.size - 0.5
F64 = {"dtype": "float64"}

CASES = [
    ("Conv2D 3x3 stride 2 'same'", Conv2D(4, 3, strides=2, padding="same", **F64), [image]),
    ("Conv2D 1x1 + relu", Conv2D(4, 1, activation="relu", **F64), [ramp]),
    ("BatchNormalization (training)", BatchNormalization(**F64), [image]),
    ("MaxPooling2D 3x3 stride 2", MaxPooling2D(3, 2, **F64), [ramp]),
    ("AveragePooling2D 2x2", AveragePooling2D(**F64), [image]),
    ("GlobalAveragePooling2D", GlobalAveragePooling2D(**F64), [image]),
    ("ZeroPadding2D", ZeroPadding2D(1, **F64), [image]),
    ("Flatten", Flatten(**F64), [image]),
    ("Dense + softmax", Dense(5, activation="softmax", **F64), [image.reshape(2, -1)]),
    ("Activation('tanh')", Activation("tanh", **F64), [image]),
    ("Add", Add(**F64), [image, ramp]),
    ("Concatenate", Concatenate(**F64), [image, ramp]),
]


def main():
    print(f"{'layer':<32}{'gradient':<12}relative error")
    worst = 0.0
    for title, layer, inputs in CASES:
        report = gradcheck.check_layer(layer, *inputs, training=True)
        for name, error in report.items():
            print(f"{title:<32}{name:<12}{error:.1e}")
            title = ""
        worst = max(worst, report.worst())
    print(f"\nworst relative error: {worst:.1e} ({'all good' if worst < 1e-7 else 'CHECK THE BACKWARD PASS'})")


if __name__ == "__main__":
    main()
