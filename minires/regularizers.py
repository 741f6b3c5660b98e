"""Weight penalties, as ``keras.regularizers``: a layer's ``kernel_regularizer``
(or ``bias_regularizer``) adds

    penalty(W) = l1 * sum |W| + l2 * sum W^2        to the loss, and
    d penalty / dW = l1 * sign(W) + 2 * l2 * W      to dL/dW,

once per training step, whatever the number of calls of the layer (the
penalty is a function of the weight, not of any call's output). Keras's
names and defaults: ``l2(0.01)``, ``l1(0.01)``, ``l1_l2(l1=0.0, l2=0.0)``,
the strings 'l1', 'l2', 'l1_l2'. The model sums them (``model.losses``);
minires.train adds them to the loss it reports and to the gradients.
"""
import math

from .backend import get_array_module


class L1L2:
    """l1 * sum |W| + l2 * sum W^2."""

    def __init__(self, l1=0.0, l2=0.0):
        for name, value in (("l1", l1), ("l2", l2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a finite number >= 0, "
                                 f"got {value!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, w):
        xp = get_array_module(w)
        return self.l1 * xp.abs(w).sum() + self.l2 * (w * w).sum()    # on a GPU: unread

    def gradient(self, w):
        return self.l1 * get_array_module(w).sign(w) + (2 * self.l2) * w

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.get_config().items())})"


class L1(L1L2):
    """l1 * sum |W| (Keras's default l1=0.01)."""

    def __init__(self, l1=0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """l2 * sum W^2 (Keras's default l2=0.01; no factor 1/2, as Keras)."""

    def __init__(self, l2=0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


l1, l2, l1_l2 = L1, L2, L1L2
NAMES = {"l1": L1, "l2": L2, "l1_l2": L1L2}


def get(identifier, owner):
    """A regularizer from None, a name ('l1', 'l2', 'l1_l2': Keras's defaults) or an object."""
    if identifier is None or isinstance(identifier, L1L2):
        return identifier
    if isinstance(identifier, str) and identifier in NAMES:
        return NAMES[identifier]()
    raise ValueError(f"{owner}: unknown regularizer {identifier!r}; minires has 'l1', 'l2', "
                     "'l1_l2' and minires.regularizers.L1 / L2 / L1L2 objects")
