"""What every application shares: the image input and the optional pooling head."""
from ..layers import GlobalAveragePooling2D, GlobalMaxPooling2D, Input


def image_input(input_tensor, input_shape, include_top, default_size, min_size, model_name,
                channels=3):
    """The model's input tensor, as Keras's applications choose it.

    With the classifier on top the input defaults to (default_size,
    default_size, 3); without it, any height and width of at least ``min_size``.
    ``channels``: the channel count required (None: any).
    """
    if input_tensor is not None:
        return input_tensor
    if input_shape is None:
        input_shape = (default_size, default_size, 3) if include_top else (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or channels not in (None, input_shape[-1]):
        raise ValueError(f"{model_name}: input_shape must be (height, width, "
                         f"{channels or 'channels'}), got {input_shape}")
    too_small = [s for s in input_shape[:2] if s is not None and s < min_size]
    if too_small:
        raise ValueError(f"{model_name}: input height and width must be at least {min_size}, "
                         f"got input_shape {input_shape}")
    return Input(shape=input_shape)


def pooling_head(x, pooling, avg_name=None, max_name=None):
    """Without the classifier: the feature map itself (pooling=None) or its
    global average ('avg') or maximum ('max') per channel."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if pooling == "avg":
        return GlobalAveragePooling2D(name=avg_name)(x)
    if pooling == "max":
        return GlobalMaxPooling2D(name=max_name)(x)
    return x


def load_weights_if_given(model, weights):
    """``weights`` is None (keep the seeded random initialisation) or the path
    of a Keras weights file, loaded by layer names (never by position)."""
    if weights == "imagenet":
        raise ValueError(f"{model.name}: minires knows only ResNet-50's ImageNet weight files; "
                         "pass the path of a Keras weights file instead")
    if weights is not None:
        from ..io.keras_h5 import load_by_name
        load_by_name(model, weights)
    return model
