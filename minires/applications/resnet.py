"""ResNets (He et al. 2015, "Deep Residual Learning for Image Recognition").

All share one plan: a stem that shrinks the image 4x (7x7/2 conv, BN, ReLU,
3x3/2 max-pool), four stages of residual blocks whose first block halves the
resolution (except stage 2) and widens the channels, then a classifier head.

    stage   output (224 input)   ResNet-50 bottleneck filters   blocks
    conv2   56 x 56              64, 64, 256                    3
    conv3   28 x 28              128, 128, 512                  4
    conv4   14 x 14              256, 256, 1024                 6
    conv5    7 x  7              512, 512, 2048                 3

``ResNet50(generation='current')`` is Keras's ``keras.applications.ResNet50``
(names ``conv1_conv``.. ``predictions``, BN epsilon 1.001e-5);
``generation='legacy'`` is the Keras 2 ``resnet50.py`` that the original
weight file was saved from (``conv1``, ``bn_conv1``, ``res2a_branch2a``..
``fc1000``, BN epsilon 1e-3), with ``pool1_pad`` as Keras >= 2.2.3 builds it
or, with ``pool1_pad=False``, without it and with the 7x7 average-pool +
Flatten head of the first release.
"""
from ..blocks import CURRENT_EPSILON, basic_block, bottleneck_block, conv_block, identity_block
from ..layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Flatten,
                      GlobalAveragePooling2D, MaxPooling2D, ZeroPadding2D)
from ..models import Model
from .common import image_input, load_weights_if_given, pooling_head

STAGE_FILTERS = (64, 128, 256, 512)
MIN_SIZE = 32
LEGACY_EPSILON = 1e-3         # BatchNormalization's default, which Keras 2's resnet50.py kept


def ResNet18(**kwargs):
    """ResNet-18: basic blocks [2, 2, 2, 2], 11.7 M parameters with the top."""
    return ResNet((2, 2, 2, 2), bottleneck=False, name="resnet18", **kwargs)


def ResNet34(**kwargs):
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return ResNet((3, 4, 6, 3), bottleneck=False, name="resnet34", **kwargs)


def ResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=1000, classifier_activation="softmax", generation=None, pool1_pad=True):
    """ResNet-50: bottleneck blocks [3, 4, 6, 3], 25,636,712 parameters.

    weights: None (seeded random initialisation), 'imagenet' (Keras's ImageNet
    file of this generation, downloaded once, see minires.io.download) or the
    path of a Keras ResNet-50 weights file of either generation, loaded by
    layer and weight names (or that file open, ``minires.io.keras_h5.opened``,
    so that one opening serves its checks and its weights).
    generation: 'current' (Keras 2.3+ / tf.keras / Keras 3 names) or 'legacy'
    (Keras 1 / 2.0-2.2 names, see the module docstring); None means the
    generation of the weights file, else 'current'. ``pool1_pad`` only applies
    to the legacy generation.
    """
    if generation is None:
        generation = weights_generation(weights) if _is_path(weights) else "current"
    options = dict(include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
                   pooling=pooling, classes=classes, classifier_activation=classifier_activation)
    if generation == "legacy":
        model = LegacyResNet50(pool1_pad=pool1_pad, **options)
    elif generation == "current":
        model = ResNet((3, 4, 6, 3), bottleneck=True, name="resnet50", **options)
    else:
        raise ValueError(f"ResNet50: generation must be 'current' or 'legacy', got {generation!r}")
    if weights == "imagenet":
        from ..io.download import resnet50_weights_path
        weights = resnet50_weights_path(generation, include_top)
    if weights is not None:
        load_resnet50_weights(model, weights, generation)
    return model


def _is_path(weights):
    return weights is not None and weights != "imagenet"


def weights_generation(filepath):
    """'legacy' or 'current': which ResNet-50 generation a Keras weights file
    holds, recognised from its layer names (conv1/bn_conv1 or conv1_conv),
    read from the file's metadata alone.  ``filepath``: a path or an open
    minires.io.keras_h5.KerasWeightsFile."""
    from ..io.keras_h5 import WeightsFileError, opened
    with opened(filepath) as file:
        names = {layer.name for layer in file.layers}
    if {"conv1", "bn_conv1"} <= names:
        return "legacy"
    if "conv1_conv" in names:
        return "current"
    raise WeightsFileError(f"{file.filepath} holds no ResNet-50 weights of either Keras "
                           f"generation: neither 'conv1'+'bn_conv1' nor 'conv1_conv' among its "
                           f"{len(names)} layers")


def weights_pool1_pad(filepath):
    """Whether the ResNet-50 that saved ``filepath`` had 'pool1_pad': True or
    False where the file says so, None where it cannot.

    A Keras 2 or 3 file lists every layer in ``layer_names``, weightless ones
    too, so a legacy file names 'pool1_pad' exactly when its network had one
    (Keras >= 2.2.3) and lacks it when saved from the first release's network.
    A Keras 1 file (weights named like 'conv1_W:0', the original 2016 download)
    cannot say: no Keras 1 network had 'pool1_pad', yet Keras >= 2.2.3 loads that
    same file into the padded network (ImageNet top-1 error 25.30% without it,
    25.07% with it); and a Keras 3 '.weights.h5' file keeps no names of
    weightless layers.  Current-generation files: always True."""
    from ..io.keras_h5 import opened
    with opened(filepath) as file:
        layers = {layer.name: layer for layer in file.layers}
    if "pool1_pad" in layers or "conv1_conv" in layers:
        return True
    conv1 = layers.get("conv1")
    if conv1 is None or conv1.keras3_path is not None:
        return None
    if all("/" not in weight_name for weight_name, _ in conv1.weights):   # Keras 1 names
        return None
    return False


def load_resnet50_weights(model, filepath, generation):
    """Load a Keras ResNet-50 file into ``model`` by names, after checking that
    it is of the model's generation (a clear error, not 40 missing layers) and,
    for the legacy generation, that the model has 'pool1_pad' if and only if
    the file's network had it (where the file says, see ``weights_pool1_pad``):
    the wrong one loads every weight and gives wrong classes."""
    from ..io.keras_h5 import WeightsFileError, load_by_name, opened
    with opened(filepath) as file:                  # one opening for the three steps
        found = weights_generation(file)
        if found != generation:
            raise WeightsFileError(f"{file.filepath} holds {found}-generation ResNet-50 weights but "
                                   f"the model is {generation}: build "
                                   f"ResNet50(generation={found!r})")
        saved_with = weights_pool1_pad(file) if generation == "legacy" else None
        built_with = "pool1_pad" in {layer.name for layer in model.layers}
        if saved_with is not None and saved_with != built_with:
            raise WeightsFileError(
                f"{file.filepath} was saved from the legacy ResNet-50 "
                f"{'with' if saved_with else 'without'} 'pool1_pad' (its layer_names say so), "
                f"but the model was built {'with' if built_with else 'without'} it: build "
                f"ResNet50(generation='legacy', pool1_pad={saved_with})")
        load_by_name(model, file, renames={"probs": "predictions"})   # old keras-applications name


def ResNet101(**kwargs):
    """ResNet-101: bottleneck blocks [3, 4, 23, 3], 44,707,176 parameters."""
    return ResNet((3, 4, 23, 3), bottleneck=True, name="resnet101", **kwargs)


def ResNet152(**kwargs):
    """ResNet-152: bottleneck blocks [3, 8, 36, 3], 60,419,944 parameters."""
    return ResNet((3, 8, 36, 3), bottleneck=True, name="resnet152", **kwargs)


def ResNet(blocks, bottleneck, name, include_top=True, weights=None, input_tensor=None,
           input_shape=None, pooling=None, classes=1000, classifier_activation="softmax"):
    """A ResNet with current Keras layer names; ``blocks`` per stage conv2..conv5.
    ``weights``: None or the path of a Keras weights file (loaded by names)."""
    inputs = image_input(input_tensor, input_shape, include_top, 224, MIN_SIZE, name)
    x = stem(inputs, Conv2D(64, 7, strides=2, name="conv1_conv"), "conv1_bn", CURRENT_EPSILON,
             relu_name="conv1_relu", pool_name="pool1_pool")
    x = residual_stages(x, blocks, STAGE_FILTERS, bottleneck)
    x = current_head(x, include_top, pooling, classes, classifier_activation)
    return load_weights_if_given(Model(inputs, x, name=name), weights)


def stem(x, conv, bn_name, epsilon, relu_name=None, max_pool=True, pool_pad=True,
         pool_name=None):
    """conv1, BN, ReLU and (``max_pool``) a 3x3/2 max-pool: every layer before the stages.

    ``conv`` is conv1 itself, built by the caller, as its size, stride,
    initialiser and name differ most between the variants.  The ImageNet stem
    (``max_pool=True``) zero-pads conv1's input by 3 ('conv1_pad'), so the 7x7/2
    conv takes 224 to 112, and the pool's by 1 ('pool1_pad'), so the pool takes
    112 to 56.  The first Keras release had no 'pool1_pad' (``pool_pad=False``:
    112 -> 55).  The CIFAR stem (``max_pool=False``) neither pads nor pools.
    Legacy Keras leaves the ReLU and the pool unnamed (None): they are numbered
    in the order they are built ('activation', 'max_pooling2d'), like Keras's.
    """
    if max_pool:
        x = ZeroPadding2D(padding=(3, 3), name="conv1_pad")(x)
    x = conv(x)
    x = BatchNormalization(axis=3, epsilon=epsilon, name=bn_name)(x)
    x = Activation("relu", name=relu_name)(x)
    if not max_pool:
        return x
    if pool_pad:
        x = ZeroPadding2D(padding=(1, 1), name="pool1_pad")(x)
    return MaxPooling2D(3, strides=2, name=pool_name)(x)


def residual_stages(x, blocks, stage_filters, bottleneck):
    """Stages conv2, conv3, ..: ``blocks[i]`` residual blocks with
    ``stage_filters[i]`` filters; every stage but the first starts with stride 2."""
    for stage, (n_blocks, filters) in enumerate(zip(blocks, stage_filters), start=2):
        for b in range(1, n_blocks + 1):
            strides = 2 if b == 1 and stage > 2 else 1
            name = f"conv{stage}_block{b}"
            if bottleneck:
                x = bottleneck_block(x, 3, (filters, filters, 4 * filters), strides=strides,
                                     projection=b == 1, name=name)
            else:
                x = basic_block(x, filters, strides=strides, name=name)
    return x


def current_head(x, include_top, pooling, classes, classifier_activation):
    if not include_top:
        return pooling_head(x, pooling, avg_name="avg_pool", max_name="max_pool")
    x = GlobalAveragePooling2D(name="avg_pool")(x)
    return Dense(classes, activation=classifier_activation, name="predictions")(x)


def LegacyResNet50(include_top=True, input_tensor=None, input_shape=None, pooling=None,
                   classes=1000, classifier_activation="softmax", pool1_pad=True):
    """ResNet-50 as Keras 2's ``resnet50.py`` builds it, legacy layer names."""
    inputs = image_input(input_tensor, input_shape, include_top, 224, MIN_SIZE, "resnet50")
    conv1 = Conv2D(64, (7, 7), strides=(2, 2), kernel_initializer="he_normal", name="conv1")
    x = stem(inputs, conv1, "bn_conv1", LEGACY_EPSILON, pool_pad=pool1_pad)
    for stage, (n_blocks, filters) in enumerate(zip((3, 4, 6, 3), STAGE_FILTERS), start=2):
        f = [filters, filters, 4 * filters]
        x = conv_block(x, 3, f, stage=stage, block="a", strides=(1, 1) if stage == 2 else (2, 2))
        for block in "bcdef"[:n_blocks - 1]:
            x = identity_block(x, 3, f, stage=stage, block=block)
    if include_top:
        if pool1_pad:
            x = GlobalAveragePooling2D(name="avg_pool")(x)
        else:               # the first release: fixed 7x7 pool, so 224x224 input only
            x = Flatten()(AveragePooling2D((7, 7), name="avg_pool")(x))
        x = Dense(classes, activation=classifier_activation, name="fc1000")(x)
    else:
        x = pooling_head(x, pooling)
    return Model(inputs, x, name="resnet50")


def CifarResNet(blocks=(2, 2, 2, 2), width=64, input_shape=(32, 32, 3), classes=10,
                classifier_activation="softmax", name="cifar_resnet", input_tensor=None):
    """ResNet for small images: a 3x3/1 stem conv, no max-pool, basic blocks.

    Stage i has ``width * 2**i`` filters; the default is the ResNet-18 used for
    CIFAR-10 (32x32 input, 10 classes); any channel count works (1 for
    grayscale). Pass ``classifier_activation=None``
    for logits, as ``minires.losses.SoftmaxCrossEntropy`` expects.
    """
    inputs = image_input(input_tensor, input_shape, True, 32, 8, name, channels=None)
    x = stem(inputs, Conv2D(width, 3, padding="same", name="conv1_conv"), "conv1_bn",
             CURRENT_EPSILON, relu_name="conv1_relu", max_pool=False)
    x = residual_stages(x, blocks, [width * 2 ** i for i in range(len(blocks))], bottleneck=False)
    x = current_head(x, True, None, classes, classifier_activation)
    return Model(inputs, x, name=name)
