"""VGG-16 and VGG-19 (Simonyan & Zisserman 2014), with Keras's layer names.

Five VGG blocks (3x3 'same' ReLU convs, then a 2x2/2 max-pool) of 64, 128,
256, 512, 512 filters, then Flatten and three Dense layers (fc1, fc2,
predictions). Most of the 138 M parameters sit in fc1 (25088 x 4096).
"""
from ..blocks import vgg_block
from ..layers import Dense, Flatten
from ..models import Model
from .common import image_input, load_weights_if_given, pooling_head

BLOCK_FILTERS = (64, 128, 256, 512, 512)


def VGG16(**kwargs):
    """VGG-16: 2, 2, 3, 3, 3 convs per block; 138,357,544 parameters."""
    return VGG((2, 2, 3, 3, 3), name="vgg16", **kwargs)


def VGG19(**kwargs):
    """VGG-19: 2, 2, 4, 4, 4 convs per block; 143,667,240 parameters."""
    return VGG((2, 2, 4, 4, 4), name="vgg19", **kwargs)


def VGG(convs_per_block, name, include_top=True, weights=None, input_tensor=None,
        input_shape=None, pooling=None, classes=1000, classifier_activation="softmax"):
    inputs = image_input(input_tensor, input_shape, include_top, 224, 32, name)
    x = inputs
    for b, (n_conv, filters) in enumerate(zip(convs_per_block, BLOCK_FILTERS), start=1):
        x = vgg_block(x, filters, n_conv, name=f"block{b}")
    if include_top:
        x = Flatten(name="flatten")(x)
        x = Dense(4096, activation="relu", name="fc1")(x)
        x = Dense(4096, activation="relu", name="fc2")(x)
        x = Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = pooling_head(x, pooling)
    return load_weights_if_given(Model(inputs, x, name=name), weights)
