"""The building blocks the classic tutorials teach, as Keras functions on tensors.

Each block takes a KerasTensor and returns one, exactly like the tutorials'
Keras code, so a block reads as the diagram in the paper:

    x = Input(shape=(56, 56, 64))
    y = conv_block(x, 3, [64, 64, 256], stage=2, block="a", strides=(1, 1))
    y = identity_block(y, 3, [64, 64, 256], stage=2, block="b")

Residual blocks compute ``relu(F(x) + shortcut(x))``. In backward the Add hands
the same gradient to both branches, and where ``x`` itself is the shortcut the
gradient reaching ``x`` is the sum of the one through F and the one straight
through the shortcut: that identity path is why very deep ResNets still train.

Layer names follow Keras: the legacy ResNet-50 scheme (``res2a_branch2a``,
``bn2a_branch2a``) for ``identity_block``/``conv_block``, the current scheme
(``conv2_block1_1_conv``) for ``bottleneck_block`` and ``basic_block``.
"""
from .layers import Activation, Add, BatchNormalization, Conv2D, MaxPooling2D, concatenate

BN_AXIS = 3                   # channels-last (N, H, W, C)
CURRENT_EPSILON = 1.001e-5    # BatchNormalization epsilon of Keras's current ResNets


# --- bottleneck residual blocks (ResNet-50/101/152) ------------------------------
def legacy_names(stage, block):
    """Legacy Keras names: branch '1' is the shortcut, '2a'..'2c' the main path;
    activations and the add stay unnamed (Keras numbers them)."""
    branches = {0: "1", 1: "2a", 2: "2b", 3: "2c"}

    def name(part, kind):
        if kind == "conv":
            return f"res{stage}{block}_branch{branches[part]}"
        if kind == "bn":
            return f"bn{stage}{block}_branch{branches[part]}"
        return None
    return name


def current_names(prefix):
    """Current Keras names: ``{prefix}_0_conv`` is the shortcut, ``_1``..``_3``
    the main path, then ``{prefix}_add`` and ``{prefix}_out``."""
    def name(part, kind):
        if kind in ("add", "out"):
            return f"{prefix}_{kind}"
        return f"{prefix}_{part}_{kind}"
    return name


def conv_bn(x, filters, kernel_size, part, name, strides=1, padding="valid", epsilon=1e-3,
            kernel_initializer="glorot_uniform", relu=True):
    """Conv2D -> BatchNormalization [-> ReLU], the unit every ResNet is made of."""
    x = Conv2D(filters, kernel_size, strides=strides, padding=padding,
               kernel_initializer=kernel_initializer, name=name(part, "conv"))(x)
    x = BatchNormalization(axis=BN_AXIS, epsilon=epsilon, name=name(part, "bn"))(x)
    if relu:
        x = Activation("relu", name=name(part, "relu"))(x)
    return x


def bottleneck_block(x, kernel_size, filters, strides=1, projection=True, name=None,
                     epsilon=CURRENT_EPSILON, kernel_initializer="glorot_uniform",
                     shortcut_first=True):
    """Bottleneck residual block (He et al. 2015, fig. 5 right), Keras's layout.

    Main path: 1x1 conv (``filters[0]``, stride ``strides``: Keras puts the
    stride on this first 1x1 conv) -> BN -> ReLU -> ``kernel_size`` conv 'same'
    (``filters[1]``) -> BN -> ReLU -> 1x1 conv (``filters[2]``) -> BN.
    Shortcut: ``x`` itself, or with ``projection`` a 1x1 conv with the same
    stride -> BN, so that its shape matches the main path's.
    Output: ReLU(main + shortcut), shape (N, H/stride, W/stride, filters[2]).

    ``name`` is a prefix (current Keras names) or a function (part, kind) -> name
    such as ``legacy_names(2, 'a')``. ``shortcut_first`` orders Add's inputs as
    current Keras does ([shortcut, main]); legacy Keras adds [main, shortcut].
    """
    name = current_names(name) if isinstance(name, str) else name
    f1, f2, f3 = filters
    unit = dict(name=name, epsilon=epsilon, kernel_initializer=kernel_initializer)
    shortcut = x
    if projection:
        shortcut = conv_bn(x, f3, 1, 0, strides=strides, relu=False, **unit)
    y = conv_bn(x, f1, 1, 1, strides=strides, **unit)
    y = conv_bn(y, f2, kernel_size, 2, padding="same", **unit)
    y = conv_bn(y, f3, 1, 3, relu=False, **unit)
    y = Add(name=name(None, "add"))([shortcut, y] if shortcut_first else [y, shortcut])
    return Activation("relu", name=name(None, "out"))(y)


def identity_block(input_tensor, kernel_size, filters, stage, block):
    """Legacy Keras ResNet-50 identity block: bottleneck with ``x`` as shortcut.

    The input must already have ``filters[2]`` channels. Layer names
    ``res{stage}{block}_branch2a``.. and ``bn{stage}{block}_branch2a``..
    """
    return bottleneck_block(input_tensor, kernel_size, filters, strides=1, projection=False,
                            name=legacy_names(stage, block), epsilon=1e-3,
                            kernel_initializer="he_normal", shortcut_first=False)


def conv_block(input_tensor, kernel_size, filters, stage, block, strides=(2, 2)):
    """Legacy Keras ResNet-50 conv block: bottleneck with a 1x1 projection
    shortcut (``res{stage}{block}_branch1``); the stride sits on the first 1x1
    conv of the main path and on the shortcut conv."""
    return bottleneck_block(input_tensor, kernel_size, filters, strides=strides, projection=True,
                            name=legacy_names(stage, block), epsilon=1e-3,
                            kernel_initializer="he_normal", shortcut_first=False)


# --- basic residual block (ResNet-18/34) -----------------------------------------
def basic_block(x, filters, strides=1, name="block", epsilon=CURRENT_EPSILON,
                kernel_initializer="glorot_uniform"):
    """Basic residual block (He et al. 2015, fig. 5 left): two 3x3 convs.

    Main path: 3x3 conv (stride ``strides``) -> BN -> ReLU -> 3x3 conv -> BN.
    Shortcut: ``x``, or a 1x1 conv with the same stride -> BN when the stride or
    the channel count changes. Output: ReLU(main + shortcut), ``filters`` channels.
    Names follow current Keras: ``{name}_1_conv``, ``{name}_0_conv`` (shortcut).
    """
    names = current_names(name)
    unit = dict(name=names, epsilon=epsilon, kernel_initializer=kernel_initializer)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, 0, strides=strides, relu=False, **unit)
    y = conv_bn(x, filters, 3, 1, strides=strides, padding="same", **unit)
    y = conv_bn(y, filters, 3, 2, padding="same", relu=False, **unit)
    y = Add(name=names(None, "add"))([shortcut, y])
    return Activation("relu", name=names(None, "out"))(y)


# --- the blocks of the VGG / Inception / residual-module tutorials -------------------
def vgg_block(layer_in, n_filters, n_conv, name=None):
    """``n_conv`` 3x3 'same' ReLU convs, then a 2x2/2 max-pool (VGG, 2014).

    Halves H and W; ``n_filters`` channels out. With ``name`` (e.g. 'block1')
    the layers get VGG16's Keras names ``block1_conv1``.. and ``block1_pool``.
    """
    for i in range(1, n_conv + 1):
        layer_in = Conv2D(n_filters, (3, 3), padding="same", activation="relu",
                          name=name and f"{name}_conv{i}")(layer_in)
    return MaxPooling2D((2, 2), strides=(2, 2), name=name and f"{name}_pool")(layer_in)


def naive_inception_module(layer_in, f1, f2, f3):
    """Inception module without projections (Szegedy et al. 2014, fig. 2a).

    Parallel 1x1 (f1), 3x3 (f2), 5x5 (f3) ReLU convs and a 3x3/1 max-pool, all
    'same', concatenated on channels: f1 + f2 + f3 + C_in channels out.
    """
    conv1 = Conv2D(f1, (1, 1), padding="same", activation="relu")(layer_in)
    conv3 = Conv2D(f2, (3, 3), padding="same", activation="relu")(layer_in)
    conv5 = Conv2D(f3, (5, 5), padding="same", activation="relu")(layer_in)
    pool = MaxPooling2D((3, 3), strides=(1, 1), padding="same")(layer_in)
    return concatenate([conv1, conv3, conv5, pool], axis=-1)


def inception_module(layer_in, f1, f2_in, f2_out, f3_in, f3_out, f4_out):
    """Inception module with 1x1 projections (Szegedy et al. 2014, fig. 2b).

    1x1 convs shrink the channels before the 3x3 and 5x5 convs and after the
    pool, which is what makes the module cheap; f1 + f2_out + f3_out + f4_out out.
    """
    conv1 = Conv2D(f1, (1, 1), padding="same", activation="relu")(layer_in)
    conv3 = Conv2D(f2_in, (1, 1), padding="same", activation="relu")(layer_in)
    conv3 = Conv2D(f2_out, (3, 3), padding="same", activation="relu")(conv3)
    conv5 = Conv2D(f3_in, (1, 1), padding="same", activation="relu")(layer_in)
    conv5 = Conv2D(f3_out, (5, 5), padding="same", activation="relu")(conv5)
    pool = MaxPooling2D((3, 3), strides=(1, 1), padding="same")(layer_in)
    pool = Conv2D(f4_out, (1, 1), padding="same", activation="relu")(pool)
    return concatenate([conv1, conv3, conv5, pool], axis=-1)


def residual_module(layer_in, n_filters):
    """Residual module without BN: relu(conv3x3(relu(conv3x3(x))) + shortcut).

    The shortcut is ``x`` when it already has ``n_filters`` channels, else a 1x1
    ReLU conv projecting it to ``n_filters`` (as in the tutorial).
    """
    merge_input = layer_in
    if layer_in.shape[-1] != n_filters:
        merge_input = Conv2D(n_filters, (1, 1), padding="same", activation="relu",
                             kernel_initializer="he_normal")(layer_in)
    conv1 = Conv2D(n_filters, (3, 3), padding="same", activation="relu",
                   kernel_initializer="he_normal")(layer_in)
    conv2 = Conv2D(n_filters, (3, 3), padding="same", activation="linear",
                   kernel_initializer="he_normal")(conv1)
    return Activation("relu")(Add()([conv2, merge_input]))
