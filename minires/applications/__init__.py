"""Whole networks, built layer by layer with Keras's layer names."""
from .resnet import CifarResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from .torch_resnet import TorchResNet, TorchResNet18
from .vgg import VGG16, VGG19

__all__ = ["CifarResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152",
           "TorchResNet", "TorchResNet18", "VGG16", "VGG19"]
