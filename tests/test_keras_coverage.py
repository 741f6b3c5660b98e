"""Tutorial code that reaches for a Keras API minires lacks gets one clear
AttributeError on that line, naming the API, why, and what the module has
(minires/keras/coverage.py), from every module of ``minires.keras``."""
import importlib
import pkgutil

import pytest

import minires.keras

REFUSED = ["datasets", "ops"]                   # out-of-scope modules: importing them says why
MODULES = ["minires.keras"] + [f"minires.keras.{info.name}" for info in
                               pkgutil.walk_packages(minires.keras.__path__, "")
                               if info.name not in ("coverage", *REFUSED)]


@pytest.mark.parametrize("module_name", MODULES)
def test_every_module_names_what_it_lacks(module_name):
    module = importlib.import_module(module_name)
    shown = module_name.replace("minires.", "")
    with pytest.raises(AttributeError, match=rf"^{shown}\.NoSuchThing is not in minires: minires does "
                                             rf"not implement it\. {shown} has: "):
        module.NoSuchThing
    assert all(hasattr(module, name) for name in module.__all__)
    assert not hasattr(module, "__no_such_dunder__")


@pytest.mark.parametrize("reach, why", [
    (lambda keras: keras.datasets.mnist, "keras.datasets downloads are out of scope"),
    (lambda keras: keras.ops.mean, r"keras.ops \(backend tensor math\) is out of scope"),
    (lambda keras: keras.layers.RandomFlip("horizontal"), "image augmentation layers are out of scope"),
    (lambda keras: keras.layers.Lambda(lambda x: x), "a Lambda layer has no backward"),
    (lambda keras: keras.utils.image_dataset_from_directory("d"), "tf.data pipelines are out of scope"),
])
def test_out_of_scope_apis_say_why(reach, why):
    with pytest.raises(AttributeError, match=why):
        reach(minires.keras)


@pytest.mark.parametrize("name", REFUSED)
def test_importing_an_out_of_scope_module_says_why(name):
    with pytest.raises(ImportError, match=rf"keras\.{name} is not in minires: .* out of scope"):
        exec(f"from minires.keras import {name}", {})
    with pytest.raises(ImportError, match=rf"keras\.{name} is not in minires"):
        importlib.import_module(f"minires.keras.{name}")
