"""A model's layers and weights: lookup, Keras order, counts, get/set, the
device they live on, files, summary. A part of minires.models.Model."""
import difflib

from .backend import check_device, device_of, to_device
from .graph import Graph


class LayersAndWeights:
    """The methods of minires.models.Model that read or write its layers' weights."""

    def get_layer(self, name=None, index=None):
        """A layer by name (KeyError with near matches if unknown) or by index."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        near = difflib.get_close_matches(str(name), [layer.name for layer in self.layers], n=3)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise KeyError(f"model {self.name!r} has no layer named {name!r}{hint}")

    def leaf_layers(self):
        """Every layer that is not a model, nested models opened, each once, in Keras order."""
        leaves, seen = [], set()
        for layer in self.layers:
            for leaf in (layer.leaf_layers() if isinstance(layer, Graph) else [layer]):
                if id(leaf) not in seen:
                    seen.add(id(leaf))
                    leaves.append(leaf)
        return leaves

    def parameters(self, trainable_only=True):
        """Yield (layer, param name) for every (trainable) parameter, in Keras
        order, opening nested models (a frozen one, trainable=False, has none
        to train); a layer shared between nested models counts once."""
        if trainable_only and not self.trainable:
            return
        seen = set()
        for layer in self.layers:
            if isinstance(layer, Graph):
                pairs = layer.parameters(trainable_only)
            else:
                pairs = ((layer, name) for name in (layer.trainable_names() if trainable_only
                                                    else list(layer.params)))
            for leaf, name in pairs:
                if (id(leaf), name) not in seen:
                    seen.add((id(leaf), name))
                    yield leaf, name

    def trainable_names(self):
        return []

    def zero_grads(self):
        """Forget every layer's gradients (backward starts from zero anyway)."""
        for layer in self.leaf_layers():
            layer.zero_grads()

    @property
    def losses(self):
        """The weight penalties of the trainable parameters (kernel_regularizer ...),
        one number each (a 0-d array on a GPU, not read), as ``keras.Model.losses``."""
        return [layer.regularizers[name](layer.params[name]) for layer, name in self.parameters()
                if name in layer.regularizers]

    def add_penalty_gradients(self):
        """Add each penalty's gradient to its weight's (after backward, once per step)."""
        for layer, name in self.parameters():
            if name in layer.regularizers:
                layer.add_grad(name, layer.regularizers[name].gradient(layer.params[name]))

    def count_params(self):
        return sum(int(layer.params[name].size) for layer, name in self.parameters(False))

    def count_trainable_params(self):
        return sum(int(layer.params[name].size) for layer, name in self.parameters())

    @property
    def weights(self):
        return [layer.params[name] for layer, name in self.parameters(False)]

    @property
    def trainable_weights(self):
        return [layer.params[name] for layer, name in self.parameters()]

    @property
    def non_trainable_weights(self):
        trainable = {id(w) for w in self.trainable_weights}
        return [w for w in self.weights if id(w) not in trainable]

    def set_weights(self, weights):
        """Copy ``weights`` (arrays in get_weights's order, NumPy or CuPy, whatever
        the model's device) into the parameters, in place; all are checked
        before any is written, so a bad list changes nothing."""
        slots = list(self.parameters(trainable_only=False))
        if len(weights) != len(slots):
            raise ValueError(f"model {self.name!r} has {len(slots)} weight arrays, got {len(weights)}")
        for (layer, name), value in zip(slots, weights):
            if tuple(value.shape) != tuple(layer.params[name].shape):
                raise ValueError(f"layer {layer.name!r}: weight {name!r} has shape "
                                 f"{tuple(layer.params[name].shape)}, got {tuple(value.shape)}")
        for (layer, name), value in zip(slots, weights):
            layer.params[name][...] = to_device(value, device_of(layer.params[name]))
        self.weights_changed()

    def weights_changed(self):
        """Say that weights of this model's layers were written into in place:
        every fast inference plan folded from one of them (this model's, or
        another model's that shares the layer) folds again at its next use."""
        for layer in self.leaf_layers():
            layer.weights_changed()
        super().weights_changed()

    # --- the device they live on ------------------------------------------------
    def to(self, device):
        """Move every parameter to ``device`` ('cpu' or 'cuda'); returns the model.
        Inputs must then live on the same device."""
        check_device(device)
        for layer in self.leaf_layers():
            for name, value in layer.params.items():
                layer.params[name] = to_device(value, device)    # a new array: the plan refolds
            layer.grads.clear()
        return self

    @property
    def device(self):
        """'cpu' or 'cuda': where the weights live (``model.to`` moves them all
        together), or None for a model without weights."""
        first = next((layer.params[name] for layer, name in self.parameters(False)), None)
        return None if first is None else device_of(first)

    def check_devices(self, arrays):
        """One clear error when inputs and weights are not all on one device."""
        devices = {device_of(a) for a in arrays}
        weights_on = set() if self.device is None else {self.device}
        if len(devices | weights_on) > 1:
            raise ValueError(f"model {self.name!r}: inputs on {sorted(devices)} but weights on "
                             f"{sorted(weights_on)}; move one of them: model.to(device) or "
                             "minires.backend.to_device(x, device)")

    # --- files and summary ----------------------------------------------------------
    def summary(self, line_length=None, print_fn=None):
        """Keras's table of layers, output shapes and parameter counts."""
        from .summary import summary_text
        self.require_graph("summary")
        (print_fn or print)(summary_text(self, line_length))

    def load_weights(self, filepath, by_name=False, skip_mismatch=False):
        """Read a minires ``.npz`` checkpoint (see minires.io.checkpoint; it returns
        the checkpoint's ``extra``) or a Keras HDF5 weights file (see
        minires.io.keras_h5.load_weights; it returns the layers skipped).

        The file's first bytes decide, whatever its name: a zip is a checkpoint,
        HDF5 is Keras's, so whatever ``save_weights`` wrote loads back. A file
        that is neither is reported by the checkpoint reader if its name ends in
        '.npz' (any case), else by the HDF5 reader. by_name and skip_mismatch
        apply to HDF5 files only: a checkpoint always pairs weights by name.
        A '.keras' or '.weights.h5' name (without by_name) is Keras 3's: read by
        Keras's object paths, nested models too (minires.io.keras_file).
        A model not built yet (a Sequential or subclassed model never called)
        has no weights to load into: every reader refuses it, saying so.
        """
        if str(filepath).lower().endswith((".keras", ".weights.h5")) and not by_name:
            from .io.keras_file import load_weights as load_keras3_weights
            return load_keras3_weights(self, filepath, skip_mismatch=skip_mismatch)
        from .io.checkpoint import file_kind, load_checkpoint
        kind = file_kind(filepath)
        if kind == "npz" or (kind is None and str(filepath).lower().endswith(".npz")):
            return load_checkpoint(self, filepath)
        from .io.keras_h5 import load_weights     # h5py is imported when an HDF5 file is read
        return load_weights(self, filepath, by_name=by_name, skip_mismatch=skip_mismatch)

    def save_weights(self, filepath):
        """Write every parameter and BN statistic, atomically; the name decides
        the format: '.weights.h5' Keras 3's weights file, '.h5' or '.hdf5' Keras's
        classic layout (minires.io.keras_file), '.keras' is refused (that is
        ``save``), any other name a ``.npz`` checkpoint at exactly ``filepath``
        (no suffix is added). An empty name, a directory, and a model not built
        yet (which has no weights to save) are refused before any file is touched."""
        if str(filepath).lower().endswith((".h5", ".hdf5", ".keras")):
            from .io.keras_file import save_weights as save_keras_weights
            return save_keras_weights(self, filepath)
        from .io.checkpoint import save_checkpoint
        save_checkpoint(self, filepath)

    # --- Keras 3's model file and config (minires.saving, minires.io.keras_file) ------
    def save(self, filepath, overwrite=True):
        """Keras's ``model.save('m.keras')``: architecture, weights, compile
        configuration and optimizer state in Keras 3's .keras file, written
        atomically; Keras 3's ``keras.saving.load_model`` reads it. A name
        ending in '.h5', '.hdf5' or '.weights.h5' (tutorials written for
        Keras 2 save so) gets the weights alone, as ``save_weights`` writes
        them: Keras reads them with ``model.load_weights``."""
        import os
        path = os.fspath(filepath)
        if not path.lower().endswith((".keras", ".h5", ".hdf5")):
            raise ValueError(f"{path}: minires saves whole models as Keras 3's '.keras' files "
                             "(weights alone: '.weights.h5', '.h5' or save_weights with '.npz')")
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists and overwrite=False")
        if not path.lower().endswith(".keras"):
            return self.save_weights(path)
        from .io.keras_file import save_model
        save_model(self, path)

    def to_json(self, **kwargs):
        """Keras's ``model.to_json()``: the architecture (keras.models.model_from_json reads it)."""
        from .io.keras_file import to_json
        return to_json(self, **kwargs)

    def get_config(self):
        """Keras's ``model.get_config()`` (Model.from_config reads it back)."""
        from .saving import model_config
        return model_config(self)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model from ``get_config``'s dict, with fresh weights."""
        from .saving import model_from_config
        return model_from_config(cls, config, custom_objects)
