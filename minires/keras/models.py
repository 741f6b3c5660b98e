"""keras.models: the model classes, load_model and model_from_json."""
import json

from ..io.keras_file import load_model  # noqa: F401
from ..models import Model, Sequential  # noqa: F401
from ..saving import ConfigError, model_from_entry
from .coverage import missing_from


def model_from_json(json_string, custom_objects=None):
    """``keras.models.model_from_json``: the model of ``model.to_json()`` (or of a
    Keras config), with fresh weights. A config minires cannot rebuild as
    written raises minires.saving.ConfigError (a ValueError) naming what."""
    try:
        entry = json.loads(json_string, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise ConfigError(f"model_from_json: not a JSON config: {error}") from None
    return model_from_entry(entry, custom_objects)[0]


def _no_constant(constant):
    raise ConfigError(f"model_from_json: the config holds {constant}, which no config value may be")


__all__ = ["Model", "Sequential", "load_model", "model_from_json"]

__getattr__ = missing_from(__name__, __all__)
