"""A ResNet written the way tf.keras tutorials write one (subclassed blocks,
a Sequential shortcut, a softmax classifier), trained with compile/fit on
scikit-learn's digits. Only the two import lines differ from TensorFlow code:

    from minires import keras          # was: from tensorflow import keras
    from minires.keras import layers   # was: from tensorflow.keras import layers

    python examples/keras_digits.py            # about 20 s on 2 CPU cores

The model ends in Dense(10, activation="softmax") and trains with Keras's
default loss form, sparse_categorical_crossentropy on probabilities: fit
hands the softmax's input the stable gradient p - y (minires.losses).
"""
import argparse
import sys
import time

import numpy as np

from minires import keras
from minires.keras import layers


class ResidualBlock(keras.Model):
    """Two 3x3 convs with BN; one ReLU object called twice; the shortcut is an
    empty Sequential (the identity) unless the block changes size."""

    def __init__(self, filters, strides=1):
        super().__init__()
        self.conv1 = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)
        self.bn1 = layers.BatchNormalization()
        self.conv2 = layers.Conv2D(filters, 3, padding="same", use_bias=False)
        self.bn2 = layers.BatchNormalization()
        self.relu = layers.ReLU()
        self.shortcut = keras.Sequential()
        if strides != 1:
            self.shortcut.add(layers.Conv2D(filters, 1, strides=strides, use_bias=False))
            self.shortcut.add(layers.BatchNormalization())

    def call(self, inputs, training=None):
        x = self.relu(self.bn1(self.conv1(inputs), training=training))
        x = self.bn2(self.conv2(x), training=training)
        return self.relu(x + self.shortcut(inputs, training=training))


class DigitsResNet(keras.Model):
    def __init__(self, width=16, num_classes=10):
        super().__init__()
        self.stem = keras.Sequential([layers.Conv2D(width, 3, padding="same", use_bias=False),
                                      layers.BatchNormalization(), layers.ReLU()])
        self.blocks = [ResidualBlock(width), ResidualBlock(2 * width, strides=2),
                       ResidualBlock(4 * width, strides=2)]
        self.pool = layers.GlobalAveragePooling2D()
        self.classifier = layers.Dense(num_classes, activation="softmax")

    def call(self, inputs, training=None):
        x = self.stem(inputs, training=training)
        for block in self.blocks:
            x = block(x, training=training)
        return self.classifier(self.pool(x))


def load_data(seed):
    """Digits upsampled to 16x16x1 in [0, 1]; a seeded 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("keras_digits.py needs scikit-learn: pip install -e '.[examples]'") from None
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((2, 2)))[..., None].astype("float32")
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.8 * len(images))
    train, test = order[:split], order[split:]
    return images[train], digits.target[train], images[test], digits.target[test]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from minires import set_random_seed
    x_train, y_train, x_test, y_test = load_data(args.seed)
    set_random_seed(args.seed)
    model = DigitsResNet(width=args.width)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.002),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, validation_data=(x_test, y_test))
    elapsed = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"{model.count_params():,} parameters; test accuracy {accuracy:.2%} "
          f"(loss {loss:.4f}) after {args.epochs} epochs, {elapsed:.1f} s of fit")


if __name__ == "__main__":
    try:
        main()
    except (ImportError, RuntimeError, ValueError) as error:
        sys.exit(f"keras_digits.py: {error}")
