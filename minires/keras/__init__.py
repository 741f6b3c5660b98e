"""``from minires import keras``: Keras's module layout over minires, so that
tutorial code runs with only its imports changed::

    from minires import keras                 # instead of: from tensorflow import keras
    from minires.keras import layers          # instead of: from keras import layers

    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.Conv2D(16, 3, activation="relu")(inputs)
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.Flatten()(x)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

Everything here is minires's own code under Keras's names; nothing imports Keras.
"""
from . import (applications, backend, callbacks, initializers, layers, losses, metrics, models,
               optimizers, preprocessing, regularizers, saving, utils)
from .layers import Input
from .models import Model, Sequential
from .coverage import missing_from

__all__ = ["Input", "Model", "Sequential", "applications", "backend", "callbacks", "initializers",
           "layers", "losses", "metrics", "models", "optimizers", "preprocessing", "regularizers", "saving",
           "utils"]

__getattr__ = missing_from(__name__, __all__)
