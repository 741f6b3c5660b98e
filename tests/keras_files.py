"""Write Keras-layout HDF5 weight files with h5py, as each Keras generation did.

Only the layout matters here (REFERENCE.md section 2): the root attribute
``layer_names``, per layer the attribute ``weight_names``, each weight at
``<layer>/<weight name>``; Keras 3's ``.weights.h5`` keeps ``layers/<path>/vars/<i>``.
"""
import h5py
import numpy as np

from minires.layers.base import snake_case

KERAS1_SUFFIX = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta",
                 "moving_mean": "running_mean", "moving_variance": "running_std"}


def random_value(slot, shape, rng):
    """A float32 array for parameter ``slot``: kernels scaled by 1/sqrt(fan in),
    positive variances, gammas near 1, so a deep network stays finite."""
    if slot == "kernel":
        value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    elif slot == "moving_variance":
        value = rng.uniform(0.5, 2.0, shape)
    elif slot == "gamma":
        value = rng.uniform(0.5, 1.5, shape)
    else:
        value = rng.standard_normal(shape) * 0.1
    return value.astype("float32")


def random_weights(model, rng):
    """{layer name: {param: array}} for every weighted layer of ``model``."""
    return {layer.name: {slot: random_value(slot, current.shape, rng)
                         for slot, current in layer.params.items()}
            for layer in model.layers if layer.params}


def weight_name(style, layer, slot):
    if style == "keras1":
        return f"{layer}_{KERAS1_SUFFIX[slot]}:0"
    if style == "keras2":
        return f"{layer}/{slot}:0"
    return f"{layer}/{slot}"                          # keras 3 legacy .h5


def write_legacy_layout(path, layer_order, weights, style="keras2", as_bytes=False,
                        full_model=False):
    """``layer_order``: every layer name of the model, weightless ones too."""
    def text(values):
        return np.array([v.encode() for v in values], dtype="S") if as_bytes else list(values)

    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["layer_names"] = text(layer_order)
        if style != "keras1":
            root.attrs["backend"] = "tensorflow"
            root.attrs["keras_version"] = "2.2.4" if style == "keras2" else "3.15.1"
        for layer in layer_order:
            group = root.create_group(layer)
            slots = weights.get(layer, {})
            names = [weight_name(style, layer, slot) for slot in slots]
            group.attrs["weight_names"] = text(names) if names else np.array([], dtype="S")
            for name, array in zip(names, slots.values()):
                group.create_dataset(name, data=array)


def write_keras3_layout(path, layers, weights):
    """``layers``: (layer name, class name) in model order; Keras 3 stores each
    weighted layer at layers/<snake class>[_k] with vars/0.. and no weight names."""
    counts = {}
    with h5py.File(path, "w") as f:
        for name, cls in layers:
            base = snake_case(cls)
            key = base if base not in counts else f"{base}_{counts[base]}"
            counts[base] = counts.get(base, 0) + 1
            variables = f.create_group(f"layers/{key}/vars")
            variables.attrs["name"] = name
            for i, array in enumerate(weights.get(name, {}).values()):
                variables.create_dataset(str(i), data=array)
