"""Optimisers and learning-rate schedules.

An optimiser turns the gradients that ``model.backward`` left in every
layer's ``grads`` into a change of its ``params``. Only trainable parameters
move (``model.parameters()``): a layer with ``trainable = False`` keeps its
weights, and BatchNormalization's moving statistics are never touched here
(BN updates them itself in its training-mode forward).

SGD and Adam follow PyTorch's conventions (``torch.optim.SGD`` and
``torch.optim.Adam``), RMSprop Keras's; weight decay included: it is L2 regularisation added to the gradient,
g <- g + weight_decay * p, before momentum or moments see it.

    optimizer = SGD(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    model.backward(loss.backward())
    optimizer.step(model)
"""
import math

from .backend import get_array_module


class Optimizer:
    """What SGD and Adam share: the learning rate, weight decay, a step count
    and per-parameter state arrays keyed 'layer/param'."""

    def __init__(self, learning_rate, weight_decay):
        if not learning_rate > 0:
            raise ValueError(f"{type(self).__name__}: learning_rate must be positive, got {learning_rate}")
        if not weight_decay >= 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay}")
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.iterations = 0
        self.slots = {}            # {slot name: {'layer/param': array}}

    def step(self, model, learning_rate=None):
        """Update every trainable parameter of ``model`` from its gradient, in place."""
        lr = self.learning_rate if learning_rate is None else learning_rate
        slots = list(model.parameters())
        for layer, name in slots:                # all checked first: no half-done step
            if name not in layer.grads:
                raise RuntimeError(f"{type(self).__name__}: layer {layer.name!r} has no gradient "
                                   f"for {name!r}; run model.backward(...) before step()")
        self.iterations += 1
        for layer, name in slots:
            param, grad = layer.params[name], layer.grads[name]
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            param -= lr * self.direction(f"{layer.name}/{name}", grad)
            layer.weights_changed()              # in place, so say so: a folded inference plan is stale

    def slot(self, kind, key, like):
        """The state array ``kind`` of parameter ``key``, zeros at first use."""
        table = self.slots.setdefault(kind, {})
        if key not in table:
            table[key] = get_array_module(like).zeros_like(like)
        return table[key]

    def state(self):
        """Everything needed to resume: {'iterations': n, '<kind>/<layer>/<param>': array}."""
        arrays = {"iterations": self.iterations}
        for kind, table in self.slots.items():
            arrays.update({f"{kind}/{key}": value for key, value in table.items()})
        return arrays

    def load_state(self, arrays):
        """Restore what ``state()`` returned (after a checkpoint round trip)."""
        self.iterations = int(arrays["iterations"])
        self.slots = {}
        for full_key, value in arrays.items():
            if full_key != "iterations":
                kind, key = full_key.split("/", 1)
                self.slots.setdefault(kind, {})[key] = value.copy()   # ours, not the caller's


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, PyTorch's form:

        v <- momentum * v + g          (v = g at the first step)
        p <- p - lr * v

    (Keras writes v <- momentum * v - lr * g, p <- p + v: the same for a
    constant learning rate, different when the rate changes.)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def direction(self, key, grad):
        if not self.momentum:
            return grad
        velocities = self.slots.setdefault("velocity", {})
        if key not in velocities:              # first step of this parameter: v = g
            velocities[key] = grad.copy()
        else:
            velocities[key] *= self.momentum
            velocities[key] += grad
        return velocities[key]


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), PyTorch's form: running means of g and g^2,
    corrected for their start at zero, give a step of about lr per parameter
    whatever the gradient's scale:

        m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon)
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        for what, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= beta < 1:
                raise ValueError(f"Adam: {what} must be in [0, 1), got {beta}")
        if not epsilon > 0:
            raise ValueError(f"Adam: epsilon must be positive, got {epsilon}")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def direction(self, key, grad):
        xp = get_array_module(grad)
        m, v = self.slot("m", key, grad), self.slot("v", key, grad)
        m *= self.beta_1
        m += (1 - self.beta_1) * grad
        v *= self.beta_2
        v += (1 - self.beta_2) * grad * grad
        m_hat = m / (1 - self.beta_1 ** self.iterations)
        v_hat = v / (1 - self.beta_2 ** self.iterations)
        return m_hat / (xp.sqrt(v_hat) + self.epsilon)


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture notes), Keras's form and defaults (compile's
    default optimizer): a running mean of g^2 scales each parameter's step,

        v <- rho v + (1 - rho) g^2
        p <- p - lr * g / sqrt(v + epsilon)

    (PyTorch adds epsilon outside the square root: the same but for tiny v.)
    """

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        if not 0 <= rho < 1:
            raise ValueError(f"RMSprop: rho must be in [0, 1), got {rho}")
        if not epsilon > 0:
            raise ValueError(f"RMSprop: epsilon must be positive, got {epsilon}")
        self.rho, self.epsilon = rho, epsilon

    def direction(self, key, grad):
        v = self.slot("v", key, grad)
        v *= self.rho
        v += (1 - self.rho) * grad * grad
        return grad / get_array_module(grad).sqrt(v + self.epsilon)


# --- learning-rate schedules: epoch (a float: 2.5 = halfway through the third) -> rate
class StepDecay:
    """lr = initial * drop ** floor(epoch / every)   (torch's StepLR)."""

    def __init__(self, initial, drop=0.1, every=30):
        self.initial, self.drop, self.every = initial, drop, every

    def __call__(self, epoch):
        return self.initial * self.drop ** math.floor(epoch / self.every)


class CosineDecay:
    """lr = final + (initial - final) (1 + cos(pi epoch / epochs)) / 2: from
    ``initial`` down to ``final`` along half a cosine, flat after ``epochs``."""

    def __init__(self, initial, epochs, final=0.0):
        self.initial, self.epochs, self.final = initial, epochs, final

    def __call__(self, epoch):
        progress = min(epoch / self.epochs, 1.0)
        return self.final + (self.initial - self.final) * (1 + math.cos(math.pi * progress)) / 2
