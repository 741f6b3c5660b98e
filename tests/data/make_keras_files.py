"""Write tests/data/<name>.keras with Keras 3 (run once, with Keras installed):

    KERAS_BACKEND=torch PYTHONPATH=tests python tests/data/make_keras_files.py

Each model of tests/keras_file_models.py gets random weights (BN statistics
included), is compiled and trained one step (so the optimizer has state), and is
saved by Keras's ``model.save``. Keras stores its members uncompressed; the
members are repacked deflated, byte for byte, to keep the files small (and so
the reader's deflate path is tested on Keras's own bytes). keras_outputs.npz
keeps, per model, the inputs, Keras's outputs and its parameter count.
"""
import os
import pathlib
import zipfile

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

import keras_file_models as models  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def repack_deflated(path):
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in members:
            archive.writestr(name, data)


def main():
    outputs = {}
    for name, build in models.BUILDERS.items():
        keras.backend.clear_session()             # layer names from conv2d, dense ... in each
        keras.utils.set_random_seed(0)
        model = build(keras)
        models.randomize_keras(model)
        models.trained(name, model, keras, {"shuffle": False})
        path = HERE / f"{name}.keras"
        model.save(path)
        repack_deflated(path)
        x = models.inputs_for(model)
        outputs[f"{name}/x"] = x
        outputs[f"{name}/y"] = model.predict(x, verbose=0)
        outputs[f"{name}/params"] = np.array(model.count_params())
        print(name, os.path.getsize(path), "bytes")
    np.savez_compressed(HERE / "keras_outputs.npz", **outputs)


if __name__ == "__main__":
    main()
