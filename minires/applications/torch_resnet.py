"""ResNet-18 as the PyTorch CIFAR-10 tutorials write it, with PyTorch's names.

    model = TorchResNet18()                                    # (N, 32, 32, 3) -> 10 logits
    model = TorchResNet18(weights="resnet18.safetensors")      # a torch state_dict (or .npz)

This is ``ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)`` of those tutorials:

    conv1  3x3/1, 64, padding=1, bias=False -> bn1 -> ReLU       (no max-pool)
    layer1 2 basic blocks,  64 filters, stride 1                 32 x 32
    layer2 2 basic blocks, 128 filters, the first with stride 2  16 x 16
    layer3 2 basic blocks, 256 filters, the first with stride 2   8 x  8
    layer4 2 basic blocks, 512 filters, the first with stride 2   4 x  4
    avgpool (adaptive average to 1 x 1, flattened) -> fc (Linear 512 -> 10): logits

A BasicBlock: conv1 3x3 (stride s, padding=1, no bias) -> bn1 -> ReLU ->
conv2 3x3 (padding=1, no bias) -> bn2, plus the shortcut: x itself, or where the
stride or the width changes ``downsample`` = 1x1 conv (stride s, no bias) -> BN;
then ReLU.  Parameters (Keras's count: trainable + BN moving statistics):

    conv1 + bn1                 1,728 + 128              1,856
    layer1                                             147,968
    layer2 (with downsample)                           525,568
    layer3                                           2,099,712
    layer4                                           8,393,728
    fc                          512 * 10 + 10            5,130
    trainable (torch's parameters())                11,173,962
    BN moving mean + variance (torch's buffers
      less num_batches_tracked): 2 * 4,800 channels      9,600
    count_params()                                  11,183,562

What makes it another network than ``CifarResNet`` (Keras's layout), so that
weights trained in one do not fit the other:
  * no convolution has a bias (BN's beta is the offset);
  * PyTorch's ``padding=1`` pads one pixel on EVERY side.  Keras's 'same' pads
    a 3x3/2 convolution on an even size with nothing before and one pixel
    after, so its windows sit one pixel further down and right.  Here every
    3x3 conv is ZeroPadding2D(1) ('<conv>_pad') then a 'valid' conv:
    out = floor((n + 2 - 3) / s) + 1, PyTorch's formula, for odd sizes too;
  * BN as PyTorch's defaults: epsilon 1e-5 and momentum 0.1, which in
    Keras's convention (the weight of the OLD value) is momentum=0.9;
  * the head gives logits (nn.Linear), no softmax: train it with
    ``minires.losses.SoftmaxCrossEntropy``, PyTorch's ``cross_entropy``.
One difference is left, in training mode only: PyTorch blends the UNBIASED
batch variance (1/(m-1), m = N*H*W) into ``running_var``, minires (like
Keras) the biased one (1/m).  The outputs and gradients of a training step
agree exactly (both normalise with the biased variance); after it,
moving_variance = 0.9 v + 0.1 var_batch where PyTorch has
0.9 v + 0.1 var_batch * m / (m - 1): a relative difference of at most
1/(m - 1) in the blended term (1/31 for layer4 of a batch of 2 at 32x32).

Layer names are PyTorch's module paths, so a state-dict key names its layer:
'conv1', 'bn1', 'layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.conv2',
'layer1.0.bn2', 'layer2.0.downsample.0' (the 1x1 conv), 'layer2.0.downsample.1'
(its BN), ..., 'fc'; ``layer2.0.bn1.running_var`` is layer 'layer2.0.bn1',
moving_variance (the mapping: minires.io.torch_weights).  The weightless
layers take names no PyTorch key uses: 'conv1_pad', 'relu', 'layer1.0.conv1_pad',
'layer1.0.relu1', 'layer1.0.add', 'layer1.0.relu2', 'avgpool'.

Fresh weights follow PyTorch's default initialisation of nn.Conv2d and
nn.Linear weights, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform_ with
a=sqrt(5)); fc's bias starts at zero (PyTorch draws it from the same range).
"""
from ..initializers import VarianceScaling
from ..layers import (Activation, Add, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D,
                      ZeroPadding2D)
from ..models import Model
from .common import image_input

TORCH_EPSILON = 1e-5          # nn.BatchNorm2d's eps
TORCH_MOMENTUM = 0.9          # nn.BatchNorm2d's momentum=0.1, in Keras's convention (1 - 0.1)


def torch_default_init():
    """PyTorch's default for conv and linear weights: U(+-1/sqrt(fan_in)), variance 1/(3 fan_in)."""
    return VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_conv(x, filters, kernel_size, strides, padding, name):
    """nn.Conv2d(..., padding=padding, bias=False): zeros on every side, then a 'valid' conv."""
    if padding:
        x = ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return Conv2D(filters, kernel_size, strides=strides, padding="valid", use_bias=False,
                  kernel_initializer=torch_default_init(), name=name)(x)


def torch_bn(x, name):
    """nn.BatchNorm2d with its defaults (eps 1e-5, momentum 0.1)."""
    return BatchNormalization(axis=3, momentum=TORCH_MOMENTUM, epsilon=TORCH_EPSILON, name=name)(x)


def torch_basic_block(x, planes, stride, name):
    """PyTorch's BasicBlock(in_planes, planes, stride) on ``x``; ``name`` its
    module path ('layer2.0'). The shortcut projects ('downsample') when the
    stride or the channel count changes."""
    out = torch_conv(x, planes, 3, stride, 1, f"{name}.conv1")
    out = Activation("relu", name=f"{name}.relu1")(torch_bn(out, f"{name}.bn1"))
    out = torch_bn(torch_conv(out, planes, 3, 1, 1, f"{name}.conv2"), f"{name}.bn2")
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:
        shortcut = torch_conv(x, planes, 1, stride, 0, f"{name}.downsample.0")
        shortcut = torch_bn(shortcut, f"{name}.downsample.1")
    out = Add(name=f"{name}.add")([out, shortcut])          # PyTorch: out += identity
    return Activation("relu", name=f"{name}.relu2")(out)


def TorchResNet(blocks=(2, 2, 2, 2), width=64, input_shape=(32, 32, 3), classes=10,
                classifier_activation=None, weights=None, name="torch_resnet", input_tensor=None):
    """PyTorch's CIFAR ``ResNet(BasicBlock, blocks, num_classes=classes)``.

    Stage i ('layer{i+1}') has ``width * 2**i`` filters; the first block of
    every stage but the first has stride 2.  Any input channel count and any
    size (the 3x3 convs pad symmetrically, so odd sizes work as in PyTorch).
    ``classifier_activation=None`` gives logits, as nn.Linear does.
    ``weights``: None or the path of a PyTorch state dict (.safetensors or
    .npz), loaded strictly by minires.io.torch_weights.load_torch_state_dict.
    """
    inputs = image_input(input_tensor, input_shape, True, 32, 1, name, channels=None)
    x = torch_conv(inputs, width, 3, 1, 1, "conv1")
    x = Activation("relu", name="relu")(torch_bn(x, "bn1"))
    for stage, n_blocks in enumerate(blocks):
        for b in range(n_blocks):
            stride = 2 if b == 0 and stage > 0 else 1
            x = torch_basic_block(x, width * 2 ** stage, stride, f"layer{stage + 1}.{b}")
    x = GlobalAveragePooling2D(name="avgpool")(x)             # AdaptiveAvgPool2d(1) + flatten
    x = Dense(classes, activation=classifier_activation, kernel_initializer=torch_default_init(),
              name="fc")(x)
    model = Model(inputs, x, name=name)
    if weights is not None:
        from ..io.torch_weights import load_torch_state_dict
        load_torch_state_dict(model, weights)
    return model


def TorchResNet18(input_shape=(32, 32, 3), classes=10, classifier_activation=None, weights=None,
                  name="torch_resnet18", input_tensor=None):
    """The tutorials' ResNet-18 (module docstring): 11,173,962 trainable
    parameters and 9,600 BN moving statistics, count_params() 11,183,562."""
    return TorchResNet((2, 2, 2, 2), 64, input_shape, classes, classifier_activation, weights,
                       name, input_tensor)
