"""What minires's ``keras`` namespace lacks, said in one clear error.

Every module of ``minires.keras`` ends with
``__getattr__ = missing_from(__name__, __all__)``, so that tutorial code
reaching for an API minires does not have (``keras.datasets``,
``layers.RandomFlip``, ``keras.ops``) gets an AttributeError naming it, why,
and what the module has, on the line that asked, instead of an error from
deep inside later.
"""

AUGMENTATION = "image augmentation layers are out of scope: augment the arrays before fit"
OUT_OF_SCOPE = {
    "datasets": "keras.datasets downloads are out of scope: load the arrays yourself (NumPy "
                ".npz, images with keras.utils.load_img) and pass them to fit",
    "ops": "keras.ops (backend tensor math) is out of scope: minires layers compute on NumPy or "
           "CuPy arrays, each with a hand-written backward",
    "Lambda": "a Lambda layer has no backward: write a minires.layers.Layer with forward and "
              "backward instead",
    "GradientTape": "minires has no automatic differentiation: model.forward, loss.backward, "
                    "model.backward and optimizer.step are the training loop (minires.train)",
    "image_dataset_from_directory": "tf.data pipelines are out of scope: load the images into "
                                    "arrays (keras.utils.load_img, img_to_array)",
    "mixed_precision": "mixed precision is out of scope: layers take dtype='float16' one by one",
    **{name: AUGMENTATION for name in ("RandomFlip", "RandomRotation", "RandomZoom", "RandomCrop",
                                       "RandomTranslation", "RandomContrast", "RandomBrightness")},
}


def missing_from(module_name, names):
    """A module ``__getattr__`` raising an AttributeError that names the missing
    API, says why it is missing, and lists ``names``, what the module has."""
    shown = module_name.replace("minires.", "", 1)

    def __getattr__(name):
        if name.startswith("__"):              # Python's own lookups (__path__, __wrapped__ ...)
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        why = OUT_OF_SCOPE.get(name, "minires does not implement it")
        raise AttributeError(f"{shown}.{name} is not in minires: {why}. {shown} has: "
                             f"{', '.join(sorted(names))}")
    return __getattr__


def refuse_import(module_name):
    """Raise the ImportError that importing ``module_name`` (an out-of-scope Keras
    module: ``from minires.keras import datasets``) deserves: what and why."""
    name = module_name.rsplit(".", 1)[-1]
    raise ImportError(f"keras.{name} is not in minires: {OUT_OF_SCOPE[name]}")
