"""ImageNet in and out: what goes around a pretrained ResNet-50, as in Keras.

    img = load_img("cat.jpg", target_size=(224, 224))   # PIL image, RGB, 224 x 224
    x = img_to_array(img)[None]                          # (1, 224, 224, 3) float32, 0..255
    x = preprocess_input(x)                              # BGR, mean-subtracted ("caffe")
    probs = model.predict(x)                             # (1, 1000)
    decode_predictions(probs, top=3)
    # [[('n02123045', 'tabby', 0.61), ('n02123159', 'tiger_cat', 0.22), ...]]

The weights Keras ships for ResNet-50 were trained (in Caffe) on BGR images
with the per-channel ImageNet mean subtracted and no scaling to [0, 1]:
feeding them anything else still gives an answer, just a worse one.

The class index (1000 ``(wnid, name)`` pairs) is bundled in
``minires/data/imagenet_class_index.json``, in Keras's format; see
``minires/data/README.md`` for where it comes from.  Pillow is needed only by
``load_img``/``img_to_array`` and is imported there, not here.
"""
import functools
import io
import json
import os
from importlib import resources

import numpy as np

from .backend import floatx, get_array_module, to_device

__all__ = ["preprocess_input", "decode_predictions", "class_index", "load_img", "img_to_array",
           "CAFFE_MEAN_BGR", "NUM_CLASSES", "INTERPOLATIONS", "COLOR_MODES"]

# The mean ImageNet pixel in B, G, R order, the order the channels are in when
# it is subtracted.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NUM_CLASSES = 1000

# load_img's interpolation names -> attribute of PIL.Image.Resampling (Keras's names).
INTERPOLATIONS = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC",
                  "lanczos": "LANCZOS", "box": "BOX", "hamming": "HAMMING"}
# load_img's color_mode -> PIL image mode.
COLOR_MODES = {"rgb": "RGB", "grayscale": "L", "rgba": "RGBA"}


# --------------------------------------------------------------------------- input

def preprocess_input(x, data_format=None):
    """Keras's ``preprocess_input`` for ResNet-50 (mode "caffe"): RGB -> BGR, then
    subtract the ImageNet mean pixel ``CAFFE_MEAN_BGR`` = (103.939, 116.779, 123.68)
    from B, G, R.  No scaling: values stay in roughly -124..152.

    Shapes: x (..., 3) channels-last RGB, values 0..255, e.g. one image
    (H, W, 3) or a batch (N, H, W, 3); the result has the same shape.

        y[..., 0] = x[..., 2] - 103.939     B
        y[..., 1] = x[..., 1] - 116.779     G
        y[..., 2] = x[..., 0] - 123.68      R

    The flip comes first: the means are in BGR order.

    dtype: float input keeps its dtype (float64 stays float64); integer or bool
    input (e.g. uint8 pixels) becomes ``minires.backend.floatx()`` (float32 by
    default).  Works on NumPy and CuPy arrays alike and returns a new array on
    the same device; ``x`` is never modified (Keras modifies float input in place).

    ``data_format``: None or 'channels_last' (minires is channels-last only).
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"preprocess_input: data_format={data_format!r} is not supported; "
                         "minires is channels-last only: pass None or 'channels_last' and "
                         "transpose (N, 3, H, W) arrays to (N, H, W, 3) first")
    xp = get_array_module(x)
    x = xp.asarray(x)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ValueError(f"preprocess_input expects channels-last RGB images, shape (..., 3) such "
                         f"as (N, 224, 224, 3); got shape {tuple(x.shape)}. A channels-first batch "
                         "(N, 3, H, W) must be transposed to (N, H, W, 3) first")
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(floatx())
    bgr = x[..., ::-1].astype(dtype)           # astype copies: x itself is left alone
    bgr -= xp.asarray(CAFFE_MEAN_BGR, dtype=dtype)
    return bgr


# -------------------------------------------------------------------------- output

@functools.lru_cache(maxsize=None)
def _load_class_index():
    """The bundled index as a tuple: entry i is class i's ``(wnid, name)``.
    Read from the package once, on first use."""
    path = resources.files("minires") / "data" / "imagenet_class_index.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    if sorted(raw, key=int) != [str(i) for i in range(NUM_CLASSES)]:
        raise RuntimeError(f"{path}: expected keys '0'..'{NUM_CLASSES - 1}', "
                           f"found {len(raw)} entries; the bundled class index is damaged")
    return tuple((raw[str(i)][0], raw[str(i)][1]) for i in range(NUM_CLASSES))


def class_index():
    """The ImageNet-1k classes: ``{index: (wnid, name)}`` for index 0..999,
    e.g. ``{0: ('n01440764', 'tench'), ..., 281: ('n02123045', 'tabby'), ...}``.

    Names are Keras's, including its two duplicates: 134 and 517 are both
    'crane' (bird, machine), 638 and 639 both 'maillot'.  wnids are unique.
    """
    return dict(enumerate(_load_class_index()))


def decode_predictions(preds, top=5):
    """Turn model outputs into readable labels, as Keras's ``decode_predictions``.

    Shapes: preds (N, 1000), one row of class scores (probabilities or logits)
    per image, NumPy or CuPy.  Returns a list of N lists, each of ``top``
    tuples ``(wnid, class_name, score)`` in descending score, e.g.
    ``[[('n02123045', 'tabby', 0.61), ('n02123159', 'tiger_cat', 0.22), ...]]``.

    ``score`` is a Python float.  Equal scores keep class order: the lower
    class index comes first (a stable sort; Keras leaves ties unspecified).
    """
    if not (isinstance(top, (int, np.integer)) and not isinstance(top, bool)
            and 1 <= top <= NUM_CLASSES):
        raise ValueError(f"decode_predictions: top must be an integer from 1 to {NUM_CLASSES}, "
                         f"got {top!r}")
    preds = to_device(preds, "cpu")            # CuPy -> NumPy; a list -> array
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError(f"decode_predictions expects a batch of ImageNet predictions, shape "
                         f"(samples, {NUM_CLASSES}); got shape {tuple(preds.shape)}")
    classes = _load_class_index()
    results = []
    for row in preds:
        order = np.argsort(-row.astype(np.float64), kind="stable")[:top]   # high to low
        results.append([(*classes[i], float(row[i])) for i in order])
    return results


# -------------------------------------------------------------------------- images

def _pil_image():
    """``PIL.Image``, imported on first use: Pillow is an optional extra."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("minires.imagenet.load_img/img_to_array need Pillow, which is not "
                          "installed: pip install Pillow  (or, in a checkout of minires: "
                          'pip install -e ".[examples]")') from error
    return Image


def _is_size(size):
    """True for a pair of positive integers such as (224, 224)."""
    return (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0
                    for n in size))


def load_img(path, target_size=None, interpolation="nearest", color_mode="rgb"):
    """Read an image file as a PIL image, as ``keras.utils.load_img`` does.

    path: a file name (str or os.PathLike) or an open binary file object.
    color_mode: 'rgb' (default; RGBA, grayscale 'L'/'LA', palette 'P', CMYK ...
        all become 3-channel RGB, alpha is dropped, not blended), 'grayscale'
        ('L') or 'rgba'.  Pillow clips 16-bit images to 0..255 here, as in Keras.
    target_size: None to keep the file's size, or ``(height, width)``: the image
        is resized to exactly that (aspect ratio not kept).  Careful: PIL itself
        talks in ``(width, height)``; this function takes Keras's order.
    interpolation: the resampling filter, one of ``INTERPOLATIONS``:
        'nearest' (Keras's default, so results match Keras's pipeline),
        'bilinear', 'bicubic', 'lanczos', 'box', 'hamming'.

    Raises FileNotFoundError (no such file), IsADirectoryError (a directory),
    ValueError (not an image; an image declaring more than twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, Pillow's decompression-bomb limit; a
    device or pipe rather than a file; a bad argument) and ImportError (Pillow
    missing: ``pip install Pillow``).
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(f"load_img: unknown color_mode {color_mode!r}; "
                         f"use one of {sorted(COLOR_MODES)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"load_img: unknown interpolation {interpolation!r}; "
                         f"use one of {list(INTERPOLATIONS)}")
    if target_size is not None and not _is_size(target_size):
        raise ValueError(f"load_img: target_size must be (height, width), two positive "
                         f"integers, got {target_size!r}")
    Image = _pil_image()

    if hasattr(path, "read"):                  # an open file (e.g. io.BytesIO)
        data, name = path.read(), getattr(path, "name", repr(path))
    else:
        name = os.fspath(path)
        if os.path.isdir(name):
            raise IsADirectoryError(f"load_img: {name!r} is a directory, not an image file")
        if os.path.exists(name) and not os.path.isfile(name):   # reading /dev/zero never ends
            raise ValueError(f"load_img: {name!r} is not a regular file (a device, a pipe ...)")
        try:
            with open(name, "rb") as f:        # read it all: no file left open
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"load_img: no such file: {name!r}") from None
    try:
        img = Image.open(io.BytesIO(data))     # checks the declared size against the bomb limit
        img.load()                             # decode now, so a broken file fails here
    except Image.DecompressionBombError as error:   # before decoding: nothing allocated
        raise ValueError(f"load_img: {name!r} declares too many pixels to decode ({error})") from error
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"load_img: {name!r} is not an image file Pillow can read") from error
    except (OSError, SyntaxError) as error:   # truncated or corrupt data
        raise ValueError(f"load_img: cannot decode the image in {name!r}: {error}") from error

    mode = COLOR_MODES[color_mode]
    if img.mode != mode:
        img = img.convert(mode)
    if target_size is not None:
        height, width = target_size
        if img.size != (width, height):        # PIL's size is (width, height)
            resample = getattr(Image.Resampling, INTERPOLATIONS[interpolation])
            img = img.resize((width, height), resample)
    return img


def img_to_array(img, dtype=None):
    """A PIL image as a NumPy array, channels last, as ``keras.utils.img_to_array``.

    Shapes: an RGB image of width W and height H -> (H, W, 3); 'L' (grayscale)
    -> (H, W, 1); 'RGBA' -> (H, W, 4).  Values stay 0..255 (no scaling).
    dtype: default ``minires.backend.floatx()`` (float32).  The array is a new,
    writable copy on the CPU.
    """
    if not (hasattr(img, "mode") and hasattr(img, "size") and hasattr(img, "getdata")):
        raise TypeError(f"img_to_array expects a PIL image (e.g. from load_img), "
                        f"got {type(img).__name__}")
    if img.mode not in ("RGB", "L", "RGBA"):
        raise ValueError(f"img_to_array: image mode {img.mode!r} is not supported; use an "
                         "'RGB', 'L' or 'RGBA' image, e.g. img.convert('RGB') or load_img(path)")
    array = np.array(img, dtype=dtype or floatx())
    if array.ndim == 2:                        # 'L': (H, W) -> (H, W, 1)
        array = array[:, :, None]
    return array
