"""Classify photos with Keras's ImageNet ResNet-50 weights, no Keras needed.

    python examples/predict.py                      # the bundled photo of a cat
    python examples/predict.py a.jpg b.png --top 3  # several images, one batch
    python examples/predict.py --weights resnet50_weights_tf_dim_ordering_tf_kernels.h5
    python examples/predict.py --device cuda        # on the GPU, through CuPy

Without --weights, Keras's file of the chosen --generation is downloaded once
(MD5-checked) into the cache that minires.io.download describes. A weights
file of either generation works; its layer names tell which network to build.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IMAGE = os.path.join(HERE, "data", "chelsea.jpg")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", default=[DEFAULT_IMAGE],
                        help="image files (default: the bundled cat photo)")
    parser.add_argument("--weights", help="a Keras ResNet-50 weights file (.h5) of either generation")
    parser.add_argument("--generation", choices=["current", "legacy"], default="current",
                        help="which Keras file to download when --weights is not given")
    parser.add_argument("--no-pool1-pad", dest="pool1_pad", action="store_false",
                        help="legacy files: build the first release's network (no pool1_pad, "
                             "7x7 average pool), as Keras < 2.2.3 did")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 1000:
        parser.error(f"--top must be between 1 and 1000, got {args.top}")
    return args


def load_batch(paths):
    """(N, 224, 224, 3) float32 caffe-preprocessed images, as Keras feeds ResNet-50."""
    from minires.imagenet import img_to_array, load_img, preprocess_input
    images = [img_to_array(load_img(path, target_size=(224, 224))) for path in paths]
    return preprocess_input(np.stack(images))


def weights_file(args):
    from minires.io.download import resnet50_weights_path
    return args.weights or resnet50_weights_path(args.generation, include_top=True)


def main(argv=None):
    args = parse_args(argv)
    from minires import backend
    from minires.applications import ResNet50
    from minires.imagenet import decode_predictions
    from minires.inference import InferenceModel

    backend.apply_speed_settings()              # before any Numba kernel runs (README: Speed)
    backend.check_device(args.device)
    batch = load_batch(args.images)
    model = ResNet50(weights=weights_file(args), pool1_pad=args.pool1_pad).to(args.device)
    fast = InferenceModel(model)                # BN folded into the convs, ReLU fused
    start = time.perf_counter()
    probs = backend.to_device(fast.predict(backend.to_device(batch, args.device)), "cpu")
    elapsed = time.perf_counter() - start
    for path, classes in zip(args.images, decode_predictions(probs, top=args.top)):
        print(path)
        for wnid, name, score in classes:
            print(f"  {wnid}  {name:<30} {score:.4f}")
    print(f"{len(args.images)} image(s) in {elapsed * 1000:.0f} ms on {args.device}")


def run():
    """main(), with every expected failure as one line on stderr and exit code 1."""
    from minires.io.download import WeightsDownloadError, WeightsNotFoundError
    from minires.io.keras_h5 import WeightsFileError
    expected = (FileNotFoundError, WeightsDownloadError, WeightsNotFoundError, WeightsFileError,
                ValueError, RuntimeError, ImportError)
    try:
        main()
    except expected as error:
        message = " ".join(str(error).split())            # one line, whatever the message
        sys.exit(f"predict.py: {message}")


if __name__ == "__main__":
    run()
