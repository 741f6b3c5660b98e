"""The small models the .keras tests save and load, written once for both libraries.

Each builder takes ``k``, a Keras-shaped namespace: ``keras`` itself (the
dev-only oracle) or ``minires.keras``; so the same code builds the same
architecture, with the same layer names, in either. tests/data/*.keras were
written by Keras from these builders (tests/data/make_keras_files.py).
"""
import numpy as np

from keras_files import random_value


def sequential_cnn(k):
    L = k.layers
    return k.Sequential([k.Input((12, 12, 3)), L.Conv2D(4, 3, activation="relu"),
                         L.MaxPooling2D(), L.Dropout(0.25), L.Conv2D(6, 3, padding="same"),
                         L.BatchNormalization(), L.Activation("relu"), L.Flatten(),
                         L.Dense(5, activation="softmax")], name="sequential_cnn")


def inception(k):
    """A projected inception module; one 3x3 branch pads by hand (ZeroPadding2D)."""
    L = k.layers
    x = k.Input((10, 10, 4))
    b1 = L.Conv2D(4, 1, activation="relu")(x)
    b2 = L.Conv2D(3, 1, activation="relu")(x)
    b2 = L.Conv2D(5, 3, activation="relu")(L.ZeroPadding2D(1)(b2))
    b3 = L.Conv2D(3, 5, padding="same", kernel_initializer="he_normal")(L.Conv2D(2, 1)(x))
    b4 = L.Conv2D(2, 1)(L.MaxPooling2D(3, 1, padding="same")(x))
    y = L.Concatenate()([b1, b2, b3, b4])
    return k.Model(x, L.Dense(4)(L.GlobalAveragePooling2D()(y)), name="inception")


def nested(k):
    """A Functional model holding a Sequential, called between a BN and an Add."""
    L = k.layers
    x = k.Input((8, 8, 3))
    y = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(x)))
    inner = k.Sequential([L.Conv2D(4, 3, padding="same"), L.BatchNormalization(momentum=0.9),
                          L.LeakyReLU(0.1)], name="inner")
    y = L.Add()([y, inner(y)])
    return k.Model(x, L.Dense(3, activation="softmax")(L.GlobalMaxPooling2D()(y)), name="nested")


def resnet_block(k):
    """A ResNet basic block whose shortcut projects (1x1 stride-2 conv and BN)."""
    L = k.layers
    x = k.Input((8, 8, 4))
    y = L.Conv2D(8, 3, strides=2, padding="same")(x)
    y = L.Activation("relu")(L.BatchNormalization(epsilon=1.001e-5)(y))
    y = L.BatchNormalization(epsilon=1.001e-5)(L.Conv2D(8, 3, padding="same")(y))
    shortcut = L.BatchNormalization(epsilon=1.001e-5)(L.Conv2D(8, 1, strides=2)(x))
    y = L.ReLU()(L.Add()([y, shortcut]))
    y = L.Flatten()(L.AveragePooling2D(2)(y))
    return k.Model(x, L.Dense(3)(y), name="resnet_block")


def merges(k):
    """The other layers: Rescaling, the elementwise merges, UpSampling2D, Reshape, Softmax."""
    L = k.layers
    x = k.Input((6, 6, 2))
    s = L.Rescaling(0.5, offset=0.1)(x)
    a, b = L.Conv2D(3, 3, padding="same")(s), L.Conv2D(3, 1)(s)
    merged = [L.Average()([a, b]), L.Multiply()([a, b]), L.Maximum()([a, b]), L.Minimum()([a, b])]
    y = L.UpSampling2D(2)(L.Concatenate()(merged))
    y = L.Conv2D(2, 3, strides=4)(y)
    y = L.Dense(4)(L.Reshape((-1,))(y))
    return k.Model(x, L.Softmax()(y), name="merges")


BUILDERS = {"sequential_cnn": sequential_cnn, "inception": inception, "nested": nested,
            "resnet_block": resnet_block, "merges": merges}

# How each is compiled (None: not compiled), and its labels' kind for one training step.
COMPILE = {
    "sequential_cnn": lambda k: dict(optimizer=k.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                                     loss="sparse_categorical_crossentropy", metrics=["accuracy"]),
    "inception": lambda k: dict(optimizer=k.optimizers.Adam(learning_rate=0.003, beta_1=0.85,
                                                            epsilon=1e-6),
                                loss=k.losses.CategoricalCrossentropy(from_logits=True)),
    "nested": lambda k: dict(optimizer=k.optimizers.RMSprop(learning_rate=0.002, rho=0.8),
                             loss="sparse_categorical_crossentropy"),
    "resnet_block": lambda k: dict(optimizer=k.optimizers.Adam(epsilon=1e-7),     # Keras's default
                                   loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
                                   metrics=["accuracy"]),
    "merges": None,
}
HYPERPARAMETERS = {                 # what a loaded model's optimizer must hold
    "sequential_cnn": ("KerasSGD", {"learning_rate": 0.05, "momentum": 0.9}),
    "inception": ("KerasAdam", {"learning_rate": 0.003, "beta_1": 0.85, "beta_2": 0.999, "epsilon": 1e-6}),
    "nested": ("KerasRMSprop", {"learning_rate": 0.002, "rho": 0.8, "epsilon": 1e-7}),
    "resnet_block": ("KerasAdam", {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                              "epsilon": 1e-7}),
}


def inputs_for(model, seed=1, count=3):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (count, *model.inputs[0].shape[1:])).astype("float32")


def labels_for(name, model, count=3):
    classes = model.outputs[0].shape[-1]
    labels = np.arange(count) % classes
    return np.eye(classes, dtype="float32")[labels] if name == "inception" else labels


def randomize(weights, slots, seed=0):
    """Random values for ``weights`` (BN statistics included), by slot name."""
    rng = np.random.default_rng(seed)
    return [random_value(slot, tuple(w.shape), rng) for w, slot in zip(weights, slots)]


def randomize_minires(model, seed=0):
    pairs = list(model.parameters(trainable_only=False))
    model.set_weights(randomize([layer.params[n] for layer, n in pairs], [n for _, n in pairs], seed))


def randomize_keras(model, seed=0):
    model.set_weights(randomize(model.weights, [w.path.rsplit("/", 1)[-1] for w in model.weights],
                                seed))


def trained(name, model, k, fit_kwargs):
    """``model`` compiled as COMPILE says and one training step taken (optimizer state)."""
    spec = COMPILE[name]
    if spec is not None:
        model.compile(**spec(k))
        model.fit(inputs_for(model, seed=2), labels_for(name, model), batch_size=3, epochs=1,
                  verbose=0, **fit_kwargs)
    return model
