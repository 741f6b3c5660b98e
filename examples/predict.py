"""Classify photos with Keras's ImageNet ResNet-50 weights, no Keras needed.

    python examples/predict.py                      # the bundled photo of a cat
    python examples/predict.py a.jpg b.png --top 3  # several images, one batch
    python examples/predict.py --weights resnet50_weights_tf_dim_ordering_tf_kernels.h5
    python examples/predict.py --device cuda        # on the GPU, through CuPy

Without --weights, Keras's file of the chosen --generation is downloaded once
(MD5-checked) into the cache that minires.io.download describes. A weights
file of either generation works; its layer names tell which network to build,
'pool1_pad' included where the file says (a Keras 1 file cannot: then the
network has it, as Keras >= 2.2.3 builds it, unless --no-pool1-pad is given).

Every failure ends the script with exit code 1 and one line on stderr, no
traceback (set MINIRES_TRACEBACK=1 to see one); only a failed download takes a
few lines, to say where to get the file by hand.
"""
import argparse
import os
import sys
import textwrap
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IMAGE = os.path.join(HERE, "data", "chelsea.jpg")


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the usage itself is in --help)."""

    def error(self, message):
        self.exit(2, f"predict.py: {message} (see --help)\n")


def parse_args(argv):
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", default=[DEFAULT_IMAGE],
                        help="image files (default: the bundled cat photo)")
    parser.add_argument("--weights", help="a Keras ResNet-50 weights file (.h5) of either generation")
    parser.add_argument("--generation", choices=["current", "legacy"], default="current",
                        help="which Keras file to download when --weights is not given")
    parser.add_argument("--no-pool1-pad", dest="pool1_pad", action="store_false", default=None,
                        help="legacy Keras 1 files, which cannot say: build the first release's "
                             "network (no pool1_pad, 7x7 average pool), as Keras < 2.2.3 did")
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


def pool1_pad(args, file):
    """The user's --no-pool1-pad, else what the file says, else True (Keras >= 2.2.3).
    A choice the file contradicts is refused when the weights load."""
    from minires.applications.resnet import weights_pool1_pad
    if args.pool1_pad is not None:
        return args.pool1_pad
    saved_with = weights_pool1_pad(file)
    return True if saved_with is None else saved_with


def main(argv=None):
    args = parse_args(argv)
    from minires import backend
    from minires.applications import ResNet50
    from minires.imagenet import decode_predictions
    from minires.io.keras_h5 import opened

    backend.check_device(args.device)
    batch = load_batch(args.images)
    with opened(weights_file(args)) as file:     # one opening: generation, pool1_pad, weights
        model = ResNet50(weights=file, pool1_pad=pool1_pad(args, file)).to(args.device)
    start = time.perf_counter()
    probs = backend.to_device(model.predict(backend.to_device(batch, args.device), verbose=0), "cpu")
    elapsed = time.perf_counter() - start
    for path, classes in zip(args.images, decode_predictions(probs, top=args.top)):
        print(path)
        for wnid, name, score in classes:
            print(f"  {wnid}  {name:<30} {score:.4f}")
    print(f"{len(args.images)} image(s) in {elapsed * 1000:.0f} ms on {args.device}")


def one_line(error):
    """An exception as one line: its message, or its type where it has none or is unexpected."""
    message = " ".join(str(error).split())
    if not isinstance(error, (OSError, ValueError, RuntimeError, ImportError)) or not message:
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message


def download_failure(error):
    """A failed download in a few short lines: what failed (wrapped at its first
    ': ' or at 100 columns), then minires.io.download's instructions (the URL,
    the MD5, where to save the file), with this script's flag for a copy."""
    what, *instructions = str(error).splitlines()
    first = f"predict.py: {what}"
    cut = first.find(": ", len("predict.py: "))
    if len(first) > 100 and 0 < cut < 100:
        lines = [first[:cut + 1], *textwrap.wrap(first[cut + 2:], width=98, initial_indent="  ",
                                                 subsequent_indent="  ", break_long_words=False)]
    else:
        lines = textwrap.wrap(first, width=100, subsequent_indent="  ", break_long_words=False)
    if instructions and "(weights=PATH)" in instructions[-1]:     # the library's advice
        instructions[-1] = "Or pass the path of a copy you have: --weights PATH."
    elif "--weights" not in str(error):
        instructions.append("Or pass the path of a copy you have: --weights PATH.")
    return "\n".join(lines + instructions)


def run():
    """main(), with every failure as one line on stderr (a failed download: a few) and
    exit code 1, never a traceback unless MINIRES_TRACEBACK is set."""
    from minires.io.download import WeightsDownloadError, WeightsNotFoundError
    try:
        main()
    except (WeightsDownloadError, WeightsNotFoundError) as error:
        sys.exit(download_failure(error))
    except KeyboardInterrupt:
        sys.exit("predict.py: interrupted")
    except MemoryError as error:
        detail = " ".join(str(error).split())
        sys.exit(f"predict.py: out of memory{f' ({detail})' if detail else ''}")
    except Exception as error:  # noqa: BLE001 - a command line tool, not a library
        if os.environ.get("MINIRES_TRACEBACK"):
            raise
        sys.exit(f"predict.py: {one_line(error)}")


if __name__ == "__main__":
    run()
