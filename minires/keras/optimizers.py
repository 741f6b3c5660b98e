"""keras.optimizers: Keras 3's update rules under Keras's names (minires.optim's
KerasSGD, KerasAdam, KerasRMSprop: decoupled weight decay, Adam's epsilon 1e-7
outside the bias correction). minires.optim.SGD and Adam are PyTorch's forms."""
from ..optim import KerasAdam as Adam  # noqa: F401
from ..optim import KerasRMSprop as RMSprop  # noqa: F401
from ..optim import KerasSGD as SGD  # noqa: F401
from ..optim import get  # noqa: F401
from .coverage import missing_from

__all__ = ["SGD", "Adam", "RMSprop", "get"]

__getattr__ = missing_from(__name__, __all__)
