"""A layer's Keras config, and the constructor arguments a config gives back.

    config = Conv2D(8, 3, name="c1").get_config()     # Keras's keys and forms
    layer = Conv2D.from_config(config)                # the same layer, new weights

``get_config`` takes each argument of the layer's own ``__init__`` from the
attribute of the same name (a regularizer from ``layer.regularizers``), adds
``name``, ``trainable`` and ``dtype``, and the arguments Keras has that minires's
constructors lack (``data_format``, ``dilation_rate``, constraints ...) at the
one value minires implements. Values take Keras's serialized forms: an
initializer or regularizer as ``{"module", "class_name", "config",
"registered_name"}``, the dtype as a ``DTypePolicy``, ``activation=None`` as
``"linear"``.

``from_config`` is the way back, and refuses rather than drops: an argument
Keras has at another value than minires implements (``dilation_rate=2``, a
constraint, ``data_format='channels_first'``), an initializer or regularizer
class minires lacks, a key no constructor takes, all raise a ValueError
naming the layer and the argument. Nothing a config names is ever imported
or evaluated: classes are looked up in fixed tables.

This module imports no layer (``Layer.get_config`` in layers/base.py calls
it), so classes are told apart by the names in their MRO.
"""
import inspect
import math

from .. import initializers, regularizers

# Arguments of Keras's layers that minires's constructors do not take, at the one value
# minires implements (Keras 3.15's get_config keys). A config with another value is refused.
CHANNELS_LAST = {"data_format": "channels_last"}
ZEROS = {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None}
ONES = {"module": "keras.initializers", "class_name": "Ones", "config": {}, "registered_name": None}
KERAS_ONLY = {
    "Conv2D": {**CHANNELS_LAST, "dilation_rate": (1, 1), "groups": 1, "kernel_constraint": None,
               "bias_constraint": None},
    "Dense": {"kernel_constraint": None, "bias_constraint": None, "quantization_config": None},
    "Conv2DTranspose": {**CHANNELS_LAST, "dilation_rate": (1, 1), "kernel_constraint": None,
                        "bias_constraint": None},
    "DepthwiseConv2D": {**CHANNELS_LAST, "dilation_rate": (1, 1), "depthwise_regularizer": None,
                        "depthwise_constraint": None, "bias_constraint": None},
    "SeparableConv2D": {**CHANNELS_LAST, "dilation_rate": (1, 1), "depthwise_regularizer": None,
                        "pointwise_regularizer": None, "depthwise_constraint": None,
                        "pointwise_constraint": None, "bias_constraint": None},
    "BatchNormalization": {"center": True, "scale": True, "beta_initializer": ZEROS,
                           "gamma_initializer": ONES, "moving_mean_initializer": ZEROS,
                           "moving_variance_initializer": ONES, "beta_regularizer": None,
                           "gamma_regularizer": None, "beta_constraint": None,
                           "gamma_constraint": None, "renorm": False,
                           "renorm_clipping": None, "renorm_momentum": 0.99},
    "ReLU": {"max_value": None, "negative_slope": 0.0, "threshold": 0.0},
    "MaxPooling2D": CHANNELS_LAST, "AveragePooling2D": CHANNELS_LAST,
    "GlobalAveragePooling2D": {**CHANNELS_LAST, "keepdims": False},
    "GlobalMaxPooling2D": {**CHANNELS_LAST, "keepdims": False},
    "ZeroPadding2D": CHANNELS_LAST, "Flatten": CHANNELS_LAST, "UpSampling2D": CHANNELS_LAST,
    "InputLayer": {"sparse": False, "ragged": False, "optional": False},
}
# Keys other Keras 3 versions write, refused unless at their no-op value; never written.
KERAS_ONLY_READ = {"Conv2D": {"lora_rank": None, "lora_alpha": None},
                   "Dense": {"lora_rank": None, "lora_alpha": None, "activity_regularizer": None}}
# Arguments minires takes through **kwargs that Keras lists in the config.
PASSED_ON = {"Conv2D": ("kernel_regularizer", "bias_regularizer", "activity_regularizer"),
             "Dense": ("kernel_regularizer", "bias_regularizer"),
             "Conv2DTranspose": ("kernel_regularizer", "bias_regularizer", "activity_regularizer"),
             "DepthwiseConv2D": ("bias_regularizer", "activity_regularizer"),
             "SeparableConv2D": ("bias_regularizer", "activity_regularizer")}
NOT_IN_CONFIG = {"self", "name", "dtype", "trainable"}
OLD_NAMES = {"LeakyReLU": ("alpha",)}      # taken for Keras 2's configs, never written
LAYER_KEYS = ("input_shape", "batch_input_shape", "input_dim", "batch_size")  # Keras 2's, not 3's

INITIALIZERS = {"Zeros": initializers.Zeros, "Ones": initializers.Ones,
                "GlorotUniform": initializers.GlorotUniform,
                "GlorotNormal": initializers.GlorotNormal, "HeNormal": initializers.HeNormal,
                "HeUniform": initializers.HeUniform, "VarianceScaling": initializers.VarianceScaling}
REGULARIZERS = {"L1": regularizers.L1, "L2": regularizers.L2, "L1L2": regularizers.L1L2}
# Keys of Keras 3.15's initializer configs that must be null here (axes for variance scaling).
NULL_INITIALIZER_KEYS = ("input_axes", "output_axes")


def class_names(cls):
    """The names of ``cls`` and its bases, most derived first."""
    return [c.__name__ for c in cls.__mro__]


def _first_entry(table, cls, default):
    return next((table[name] for name in class_names(cls) if name in table), default)


def keras_only_arguments(cls):
    return _first_entry(KERAS_ONLY, cls, {})


def is_input_layer(cls):
    return "InputLayer" in class_names(cls)


# --- layer -> config --------------------------------------------------------------------
def layer_config(layer):
    """Keras's config of ``layer`` (what ``Layer.get_config`` returns)."""
    cls = type(layer)
    if is_input_layer(cls):
        config = {"name": layer.name, "dtype": layer.dtype}      # Keras: a plain dtype here
    else:
        config = {"name": layer.name, "trainable": layer.trainable,
                  "dtype": dtype_policy(layer.dtype)}
    for name in config_arguments(cls):
        config[name] = serialize(name, argument_value(layer, name))
    for name, value in keras_only_arguments(cls).items():
        config[name] = serialize(name, value)
    return config


def config_arguments(cls):
    """The constructor arguments of ``cls`` that its config lists, in order."""
    skipped = {*NOT_IN_CONFIG, *LAYER_KEYS, *_first_entry(OLD_NAMES, cls, ())}
    own = [name for name, parameter in inspect.signature(cls.__init__).parameters.items()
           if name not in skipped
           and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    return own + [name for name in _first_entry(PASSED_ON, cls, ()) if name not in own]


def argument_value(layer, name):
    """The value ``layer`` was built with for argument ``name``: the attribute of
    that name (a weight penalty from ``layer.regularizers``)."""
    if name.endswith("_regularizer"):
        return layer.regularizers.get(name[:-len("_regularizer")])
    if not hasattr(layer, name):
        raise NotImplementedError(
            f"layer {layer.name!r} ({type(layer).__name__}): get_config reads each constructor "
            f"argument from the attribute of the same name, and there is no attribute {name!r}; "
            "keep the argument as an attribute, or override get_config() and from_config()")
    return getattr(layer, name)


def dtype_policy(dtype):
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype},
            "registered_name": None}


def serialize(name, value):
    """``value`` of argument ``name`` in Keras's serialized form (JSON types, tuples kept)."""
    if name == "activation" and value is None:
        return "linear"
    if isinstance(value, initializers.Initializer):
        return _serialized(value, "keras.initializers", _initializer_config(value))
    if isinstance(value, regularizers.L1L2):
        return _serialized(value, "keras.regularizers", value.get_config())
    if isinstance(value, (list, tuple)):
        return tuple(serialize(name, item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str, dict)):
        return value
    raise NotImplementedError(f"argument {name!r}: minires cannot write a "
                              f"{type(value).__name__} in a Keras config")


def _serialized(value, module, config):
    return {"module": module, "class_name": type(value).__name__, "config": config,
            "registered_name": None}


def _initializer_config(initializer):
    if type(initializer) not in INITIALIZERS.values():
        raise NotImplementedError(f"initializer {type(initializer).__name__}: Keras has no class "
                                  "of that name to read it back")
    if isinstance(initializer, (initializers.Zeros, initializers.Ones)):
        return {}
    config = {"seed": initializer.seed}
    if type(initializer) is initializers.VarianceScaling:
        config.update(scale=initializer.scale, mode=initializer.mode,
                      distribution=initializer.distribution)
    return config


# --- config -> constructor arguments ------------------------------------------------------
def layer_arguments(cls, config, owner=None):
    """The keyword arguments that rebuild a ``cls`` from its Keras ``config``."""
    if not isinstance(config, dict):
        raise ValueError(f"{owner or cls.__name__}: its config must be a JSON object, got "
                         f"{type(config).__name__}")
    owner = owner or f"layer {config.get('name')!r} ({cls.__name__})"
    arguments = dict(config)
    fixed = {**_first_entry(KERAS_ONLY_READ, cls, {}), **keras_only_arguments(cls)}
    for name, supported in fixed.items():
        if name in arguments:
            _check_supported(owner, name, arguments.pop(name), supported)
    accepted = accepted_arguments(cls)
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise ValueError(f"{owner}: minires's {cls.__name__} takes no argument "
                         f"{', '.join(map(repr, unknown))}; refused rather than ignored")
    return {name: deserialize(name, value, owner) for name, value in arguments.items()}


def accepted_arguments(cls):
    """Every keyword ``cls(...)`` takes: its ``__init__``'s, and those of the
    ``__init__`` it hands ``**kwargs`` on to, up the MRO."""
    accepted = set()
    for base in cls.__mro__:
        if "__init__" not in vars(base):
            continue
        parameters = inspect.signature(base.__init__).parameters.values()
        accepted |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                              p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return accepted - {"self"}


def _check_supported(owner, name, value, supported):
    if not _same(value, supported):
        raise ValueError(f"{owner}: {name}={_shown(value)} is not supported: minires implements "
                         f"only {name}={_shown(supported)}")


def _same(value, supported):
    """Whether a config value means ``supported``: (1, 1) is also [1, 1] or 1; an
    initializer also its name ('zeros') or its class without arguments."""
    if isinstance(supported, tuple):
        items = list(value) if isinstance(value, (list, tuple)) else [value] * len(supported)
        return len(items) == len(supported) and all(_same(a, b) for a, b in zip(items, supported))
    if isinstance(supported, dict):
        return _initializer_class(value) == supported["class_name"] and not _arguments_of(value)
    if isinstance(supported, bool) or isinstance(value, bool):
        return value is supported
    if isinstance(supported, (int, float)):
        return isinstance(value, (int, float)) and value == supported
    return value == supported


def _initializer_class(value):
    if isinstance(value, str):
        return "".join(part.capitalize() for part in value.split("_"))   # 'zeros' -> 'Zeros'
    return value.get("class_name") if isinstance(value, dict) else None


def _arguments_of(value):
    config = value.get("config") if isinstance(value, dict) else None
    return {k: v for k, v in (config or {}).items() if v is not None}


def _shown(value):
    return repr(value if not isinstance(value, dict) or "class_name" not in value
                else value["class_name"])


def deserialize(name, value, owner):
    """A config value as minires's constructor takes it."""
    if name == "dtype":
        return policy_dtype(value, owner)
    if name == "activation":
        return activation_name(value, owner)
    if name.endswith("_initializer"):
        return initializer(value, owner, name)
    if name.endswith("_regularizer"):
        return regularizer(value, owner, name)
    return plain(value, owner, name)


def plain(value, owner, name):
    """Numbers, strings, None and (nested) lists of them, lists as tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(item, owner, name) for item in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{owner}: argument {name!r} holds {_what(value)}, which minires's "
                     "layer does not take")


def _what(value):
    if isinstance(value, dict) and isinstance(value.get("class_name"), str):
        return f"a serialized {value['class_name']!r} object"
    return f"a {type(value).__name__}"


def policy_dtype(value, owner):
    """'float32' from Keras's dtype forms: a name, or a (Float)DTypePolicy object."""
    if isinstance(value, dict):
        if value.get("class_name") not in ("DTypePolicy", "FloatDTypePolicy"):
            raise ValueError(f"{owner}: dtype policy {_what(value)} is not supported (minires has "
                             "plain float types: no mixed precision, no quantization)")
        value = (value.get("config") or {}).get("name")
    if value is None:
        return None
    if value not in ("float16", "float32", "float64"):
        raise ValueError(f"{owner}: dtype {value!r} is not supported: minires layers compute in "
                         "float16, float32 or float64 (no mixed precision)")
    return value


def activation_name(value, owner):
    """An activation by name: Keras writes built-in ones as strings, or as
    {'class_name': 'function', 'config': name}. The layer checks the name."""
    if isinstance(value, dict) and value.get("class_name") == "function" \
            and value.get("module") in ("keras.activations", None):
        value = value.get("config")
    if not isinstance(value, str):
        raise ValueError(f"{owner}: activation {_what(value)} is not supported; minires takes "
                         "activations by name ('relu', 'softmax', ...), never code")
    return value


def initializer(value, owner, name):
    """A minires initializer from Keras's serialized form (or a name)."""
    if isinstance(value, str):
        return initializers.get(value, owner=f"{owner}, argument {name!r}")
    cls = _serialized_class(value, INITIALIZERS, "keras.initializers", owner, name)
    config = dict(value.get("config") or {})
    for key in NULL_INITIALIZER_KEYS:
        if config.pop(key, None) is not None:
            raise ValueError(f"{owner}: {name}'s {key} is not supported by minires")
    return _construct(cls, config, owner, name)


def regularizer(value, owner, name):
    if value is None or isinstance(value, str):
        return regularizers.get(value, f"{owner}, argument {name!r}")
    cls = _serialized_class(value, REGULARIZERS, "keras.regularizers", owner, name)
    return _construct(cls, dict(value.get("config") or {}), owner, name)


def _serialized_class(value, table, module, owner, name):
    """The class of a serialized Keras object, if ``table`` has it."""
    class_name = value.get("class_name") if isinstance(value, dict) else None
    if class_name not in table or value.get("module") not in (module, None):
        source = f" from module {value.get('module')!r}" if isinstance(value, dict) else ""
        raise ValueError(f"{owner}: argument {name!r} is {_what(value)}{source}, which minires "
                         f"does not have; it has {', '.join(sorted(table))} (from {module})")
    if not isinstance(value.get("config", {}), (dict, type(None))):
        raise ValueError(f"{owner}: argument {name!r}: its config must be a JSON object")
    return table[class_name]


def _construct(cls, config, owner, name):
    unknown = sorted(set(config) - set(inspect.signature(cls.__init__).parameters) - {"self"})
    if unknown:
        raise ValueError(f"{owner}: argument {name!r} ({cls.__name__}) has "
                         f"{', '.join(map(repr, unknown))}, which minires's {cls.__name__} "
                         "does not take")
    for key, value in config.items():
        if not (value is None or isinstance(value, (str, int, float))) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{owner}: argument {name!r} ({cls.__name__}): {key}={value!r} "
                             "is not a plain value")
    try:
        return cls(**config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: argument {name!r}: {error}") from None
