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


# --- a small network and hostile edits, for tests that load many files -------------------
SMALL_LAYERS = ["input_layer", "conv2d", "batch_normalization", "activation", "conv2d_1",
                "global_average_pooling2d", "dense"]


def small_model(L=None, Model=None):
    """Input 8x8x3 -> conv2d (3x3, 4) -> batch_normalization -> relu -> conv2d_1 (3x3, 4)
    -> global average pool -> dense (3): four layers with weights, eight arrays, named as
    Keras names them automatically.  ``L``/``Model``: minires's (default) or Keras's."""
    if L is None:
        from minires import layers as L
        from minires.models import Model
    x_in = L.Input((8, 8, 3), name="input_layer")
    y = L.Conv2D(4, 3, name="conv2d")(x_in)
    y = L.BatchNormalization(name="batch_normalization")(y)
    y = L.Activation("relu", name="activation")(y)
    y = L.Conv2D(4, 3, name="conv2d_1")(y)
    y = L.GlobalAveragePooling2D(name="global_average_pooling2d")(y)
    return Model(x_in, L.Dense(3, name="dense")(y), name="small")


def write_small_file(path, seed=0, style="keras2", as_bytes=False):
    """small_model's layout with random weights (returned, {layer: {param: array}})."""
    weights = random_weights(small_model(), np.random.default_rng(seed))
    write_legacy_layout(path, SMALL_LAYERS, weights, style, as_bytes)
    return weights


def replace(path, key, value=None, **create_dataset):
    """Put ``value`` at ``key`` of the file at ``path`` instead of what is there: an h5py
    link (SoftLink, ExternalLink), or, with ``create_dataset`` arguments, a new dataset."""
    with h5py.File(path, "r+") as f:
        if key in f or isinstance(f.get(key, getlink=True), h5py.SoftLink):
            del f[key]
        if value is not None:
            f[key] = value
        else:
            f.create_dataset(key, **create_dataset)
