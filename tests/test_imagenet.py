"""ImageNet pre/post-processing against hand-computed values, Keras's class index
and Pillow's own resize.  Tests that need Pillow skip without it."""
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from minires import imagenet
from minires.backend import floatx_scope
from minires.imagenet import decode_predictions, img_to_array, load_img, preprocess_input

EXAMPLE_IMAGE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "data" / "chelsea.jpg"

# Keras's imagenet_class_index.json at these indices.
KNOWN_CLASSES = {
    0: ("n01440764", "tench"),
    1: ("n01443537", "goldfish"),
    2: ("n01484850", "great_white_shark"),
    3: ("n01491361", "tiger_shark"),
    4: ("n01494475", "hammerhead"),
    7: ("n01514668", "cock"),
    8: ("n01514859", "hen"),
    134: ("n02012849", "crane"),
    264: ("n02113186", "Cardigan"),
    281: ("n02123045", "tabby"),
    282: ("n02123159", "tiger_cat"),
    283: ("n02123394", "Persian_cat"),
    285: ("n02124075", "Egyptian_cat"),
    474: ("n02963159", "cardigan"),
    517: ("n03126707", "crane"),
    607: ("n03590841", "jack-o'-lantern"),
    638: ("n03710637", "maillot"),
    639: ("n03710721", "maillot"),
    999: ("n15075141", "toilet_tissue"),
}


# ----------------------------------------------------------------- preprocess_input

def test_preprocess_one_pixel_by_hand():
    x = np.array([[[10, 20, 30]]], dtype=np.uint8)          # R=10, G=20, B=30
    y = preprocess_input(x)
    expected = np.array([30 - 103.939, 20 - 116.779, 10 - 123.68], dtype=np.float32)
    np.testing.assert_allclose(y[0, 0], expected, rtol=0, atol=1e-5)


def test_preprocess_batch_matches_formula(rng):
    x = rng.uniform(0, 255, size=(2, 5, 4, 3))
    y = preprocess_input(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(y[..., 0], x[..., 2] - 103.939, rtol=0, atol=1e-12)
    np.testing.assert_allclose(y[..., 1], x[..., 1] - 116.779, rtol=0, atol=1e-12)
    np.testing.assert_allclose(y[..., 2], x[..., 0] - 123.68, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_preprocess_leaves_input_alone(rng, dtype):
    x = rng.uniform(0, 255, size=(3, 4, 3)).astype(dtype)
    before = x.copy()
    y = preprocess_input(x)
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(x, y)


@pytest.mark.parametrize("given, expected", [
    ("uint8", "float32"), ("int64", "float32"), ("bool", "float32"),
    ("float16", "float16"), ("float32", "float32"), ("float64", "float64")])
def test_preprocess_dtype(given, expected):
    y = preprocess_input(np.zeros((2, 2, 3), dtype=given))
    assert y.dtype == np.dtype(expected)


def test_preprocess_integer_input_follows_floatx():
    with floatx_scope("float64"):
        y = preprocess_input(np.full((1, 1, 3), 255, dtype=np.uint8))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y[0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68])


def test_preprocess_accepts_a_list():
    y = preprocess_input([[10, 20, 30]])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[30 - 103.939, 20 - 116.779, 10 - 123.68]], atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (224, 224), (5, 1)])
def test_preprocess_bad_shape_names_it(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        preprocess_input(np.zeros(shape, dtype=np.float32))


def test_preprocess_rejects_scalar():
    with pytest.raises(ValueError, match=r"\(\)"):
        preprocess_input(np.float32(3.0))


def test_preprocess_rejects_channels_first():
    with pytest.raises(ValueError, match="channels_first"):
        preprocess_input(np.zeros((1, 2, 2, 3)), data_format="channels_first")
    assert preprocess_input(np.zeros((1, 2, 2, 3)), data_format="channels_last").shape == (1, 2, 2, 3)


@pytest.mark.cuda
def test_preprocess_on_cupy():
    import cupy
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    y = preprocess_input(cupy.asarray(x))
    assert isinstance(y, cupy.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(cupy.asnumpy(y), preprocess_input(x), rtol=0, atol=1e-5)


# ------------------------------------------------------------- decode_predictions

def one_hot_rows(*indices):
    preds = np.zeros((len(indices), 1000), dtype=np.float32)
    preds[np.arange(len(indices)), indices] = 1.0
    return preds


def test_class_index_is_complete_and_keras_like():
    index = imagenet.class_index()
    assert sorted(index) == list(range(1000))
    wnids = [wnid for wnid, _ in index.values()]
    assert len(set(wnids)) == 1000
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in wnids)
    assert wnids == sorted(wnids)                  # ILSVRC orders classes by wnid
    names = [name for _, name in index.values()]
    assert not [name for name in names if not re.fullmatch(r"[A-Za-z0-9_'\-]+", name)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert duplicates == ["crane", "maillot"]      # Keras's two duplicate names


@pytest.mark.parametrize("index", sorted(KNOWN_CLASSES))
def test_known_classes(index):
    assert imagenet.class_index()[index] == KNOWN_CLASSES[index]
    [[(wnid, name, score)]] = decode_predictions(one_hot_rows(index), top=1)
    assert (wnid, name, score) == (*KNOWN_CLASSES[index], 1.0)


def test_decode_sorts_by_descending_score():
    preds = np.zeros((1, 1000))
    preds[0, [281, 282, 285, 0]] = [0.2, 0.5, 0.1, 0.15]
    [decoded] = decode_predictions(preds, top=4)
    assert decoded == [("n02123159", "tiger_cat", 0.5), ("n02123045", "tabby", 0.2),
                       ("n01440764", "tench", 0.15), ("n02124075", "Egyptian_cat", 0.1)]
    assert all(type(score) is float for _, _, score in decoded)


def test_decode_one_list_per_sample():
    decoded = decode_predictions(one_hot_rows(281, 999, 0), top=2)
    assert [row[0][:2] for row in decoded] == [KNOWN_CLASSES[281], KNOWN_CLASSES[999],
                                               KNOWN_CLASSES[0]]
    assert [len(row) for row in decoded] == [2, 2, 2]


def test_decode_ties_keep_class_order():
    preds = np.zeros((1, 1000), dtype=np.float32)
    preds[0, [999, 7, 500]] = 0.25
    [decoded] = decode_predictions(preds, top=3)
    assert [name for _, name, _ in decoded] == ["cock", imagenet.class_index()[500][1],
                                                "toilet_tissue"]


def test_decode_top_counts(rng):
    preds = rng.random((2, 1000)).astype(np.float32)
    assert [len(row) for row in decode_predictions(preds)] == [5, 5]           # Keras's default
    everything = decode_predictions(preds, top=1000)[1]
    assert len({wnid for wnid, _, _ in everything}) == 1000
    scores = [score for _, _, score in everything]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == float(preds[1].max()) and scores[-1] == float(preds[1].min())


@pytest.mark.parametrize("top", [0, -1, 1001, 2.0, True])
def test_decode_bad_top(top):
    with pytest.raises(ValueError, match="top"):
        decode_predictions(one_hot_rows(0), top=top)


@pytest.mark.parametrize("shape", [(1000,), (2, 10), (1, 1001), (1, 1, 1000)])
def test_decode_bad_shape_names_it(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        decode_predictions(np.zeros(shape))


@pytest.mark.cuda
def test_decode_on_cupy():
    import cupy
    [[(wnid, name, score)]] = decode_predictions(cupy.asarray(one_hot_rows(281)), top=1)
    assert (wnid, name, score) == ("n02123045", "tabby", 1.0)


# ------------------------------------------------------------ load_img, img_to_array

def save(image, path):
    image.save(path)
    return path


def noise_image(rng, width, height):
    from PIL import Image
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")


def test_importing_the_module_does_not_import_pillow():
    code = "import sys, minires.imagenet; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_pillow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)            # makes `import PIL` fail
    with pytest.raises(ImportError, match="pip install Pillow"):
        load_img(tmp_path / "anything.png")


def test_rgba_becomes_rgb_alpha_dropped(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    path = save(Image.new("RGBA", (5, 4), (10, 200, 30, 0)), tmp_path / "rgba.png")
    img = load_img(path)
    assert img.mode == "RGB" and img.size == (5, 4)
    array = img_to_array(img)
    assert array.shape == (4, 5, 3)
    np.testing.assert_array_equal(array[2, 3], [10, 200, 30])


@pytest.mark.parametrize("mode, colour, rgb", [("L", 77, (77, 77, 77)),
                                               ("LA", (90, 10), (90, 90, 90))])
def test_grey_becomes_rgb(tmp_path, mode, colour, rgb):
    Image = pytest.importorskip("PIL.Image")
    path = save(Image.new(mode, (3, 2), colour), tmp_path / f"{mode}.png")
    array = img_to_array(load_img(path))
    assert array.shape == (2, 3, 3)
    np.testing.assert_array_equal(array, np.broadcast_to(rgb, (2, 3, 3)))


def test_palette_becomes_rgb(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)         # colour 0 red, 1 blue
    img.putpixel((1, 0), 1)
    array = img_to_array(load_img(save(img, tmp_path / "palette.png")))
    np.testing.assert_array_equal(array, [[[255, 0, 0], [0, 0, 255]]])


def test_cmyk_becomes_rgb(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    path = save(Image.new("CMYK", (4, 3), (0, 0, 0, 0)), tmp_path / "cmyk.jpg")
    img = load_img(path)
    assert img.mode == "RGB"
    assert img_to_array(img).shape == (3, 4, 3)
    assert img_to_array(img).min() > 240                      # no ink: white


def test_colour_modes(tmp_path, rng):
    pytest.importorskip("PIL")
    path = save(noise_image(rng, 6, 4), tmp_path / "noise.png")
    assert img_to_array(load_img(path, color_mode="grayscale")).shape == (4, 6, 1)
    assert img_to_array(load_img(path, color_mode="rgba")).shape == (4, 6, 4)
    with pytest.raises(ValueError, match="'bgr'.*grayscale.*rgb.*rgba"):
        load_img(path, color_mode="bgr")


def test_target_size_is_height_then_width(tmp_path, rng):
    pytest.importorskip("PIL")
    path = save(noise_image(rng, 40, 20), tmp_path / "wide.png")   # 40 wide, 20 high
    img = load_img(path, target_size=(10, 30))
    assert img.size == (30, 10)                               # PIL: (width, height)
    assert img_to_array(img).shape == (10, 30, 3)
    assert load_img(path).size == (40, 20)                    # no target_size: unchanged


@pytest.mark.parametrize("name, pil_filter", [
    ("nearest", "NEAREST"), ("bilinear", "BILINEAR"), ("bicubic", "BICUBIC"),
    ("lanczos", "LANCZOS"), ("box", "BOX"), ("hamming", "HAMMING")])
def test_resize_equals_pillow(tmp_path, rng, name, pil_filter):
    Image = pytest.importorskip("PIL.Image")
    path = save(noise_image(rng, 37, 23), tmp_path / "noise.png")
    expected = Image.open(path).convert("RGB").resize((17, 11), getattr(Image.Resampling, pil_filter))
    got = load_img(path, target_size=(11, 17), interpolation=name)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_default_resize_is_nearest(tmp_path, rng):
    Image = pytest.importorskip("PIL.Image")
    path = save(noise_image(rng, 37, 23), tmp_path / "noise.png")
    source = Image.open(path).convert("RGB")
    nearest = np.asarray(source.resize((17, 11), Image.NEAREST))
    bilinear = np.asarray(source.resize((17, 11), Image.BILINEAR))
    assert not np.array_equal(nearest, bilinear)              # the check below can tell them apart
    np.testing.assert_array_equal(np.asarray(load_img(path, target_size=(11, 17))), nearest)


def test_unknown_interpolation_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="'cubic'.*nearest.*bilinear.*bicubic.*lanczos.*box.*hamming"):
        load_img(tmp_path / "x.png", interpolation="cubic")


@pytest.mark.parametrize("size", [224, (224,), (224, 0), (224.0, 224), "224x224"])
def test_bad_target_size(tmp_path, size):
    with pytest.raises(ValueError, match="target_size"):
        load_img(tmp_path / "x.png", target_size=size)


def test_missing_file_names_the_path(tmp_path):
    pytest.importorskip("PIL")
    path = tmp_path / "no-such-cat.jpg"
    with pytest.raises(FileNotFoundError, match="no-such-cat.jpg"):
        load_img(path)


def test_not_an_image_names_the_path(tmp_path):
    pytest.importorskip("PIL")
    path = tmp_path / "notes.jpg"
    path.write_text("this is a text file, not a JPEG\n")
    with pytest.raises(ValueError, match="notes.jpg.* not an image"):
        load_img(path)


def test_truncated_image_names_the_path(tmp_path, rng):
    pytest.importorskip("PIL")
    whole = save(noise_image(rng, 64, 64), tmp_path / "whole.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(ValueError, match="broken.png"):
        load_img(broken)


def test_load_from_file_object(tmp_path, rng):
    pytest.importorskip("PIL")
    path = save(noise_image(rng, 5, 3), tmp_path / "noise.png")
    with open(path, "rb") as f:
        img = load_img(f)
    np.testing.assert_array_equal(img_to_array(img), img_to_array(load_img(str(path))))


def test_img_to_array_values_and_dtype():
    Image = pytest.importorskip("PIL.Image")
    pixels = np.array([[[0, 128, 255], [1, 2, 3]]], dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB")
    array = img_to_array(img)
    assert array.dtype == np.float32 and array.shape == (1, 2, 3)
    np.testing.assert_array_equal(array, pixels)
    assert img_to_array(img, dtype="float64").dtype == np.float64
    with floatx_scope("float64"):
        assert img_to_array(img).dtype == np.float64


def test_img_to_array_rejects_other_things():
    Image = pytest.importorskip("PIL.Image")
    with pytest.raises(TypeError, match="ndarray"):
        img_to_array(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="'CMYK'"):
        img_to_array(Image.new("CMYK", (2, 2)))


def test_bundled_example_photo():
    pytest.importorskip("PIL")
    img = load_img(EXAMPLE_IMAGE)
    assert img.mode == "RGB" and img.size == (451, 300)
    array = img_to_array(img)
    assert array.shape == (300, 451, 3) and array.dtype == np.float32
    assert array.std() > 10                                   # a photo, not a blank
    x = preprocess_input(img_to_array(load_img(EXAMPLE_IMAGE, target_size=(224, 224)))[None])
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
