"""Optimisers and learning-rate schedules.

An optimiser turns the gradients that ``model.backward`` left in every
layer's ``grads`` into a change of its ``params``. Only trainable parameters
move (``model.parameters()``): a layer with ``trainable = False`` keeps its
weights, and BatchNormalization's moving statistics are never touched here
(BN updates them itself in its training-mode forward).

Two conventions, each under its own name:

  SGD, Adam        PyTorch's (``torch.optim.SGD``, ``torch.optim.Adam``), the forms
                   the course derives; RMSprop Keras's rule. Weight decay is L2
                   regularisation added to the gradient, g <- g + weight_decay * p,
                   before momentum or moments see it.
  KerasSGD, KerasAdam, KerasRMSprop
                   Keras 3's (``keras.optimizers.SGD``, ``Adam``, ``RMSprop``: what
                   ``minires.keras.optimizers`` gives under those names, and what
                   compile's strings 'sgd', 'adam', 'rmsprop' pick), with Keras's
                   names, signatures and defaults. Weight decay is decoupled, as in
                   every Keras 3 optimiser: p <- p - lr * weight_decay * p beside the
                   update, never through the gradient.

    optimizer = SGD(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    model.backward(loss.backward())
    optimizer.step(model)
"""
import math

from .backend import get_array_module, quiet_overflow
from .utils import check_flag, check_number, finite_flag, flags_all


def check_learning_rate(rate, where):
    """``rate`` as a float if it is a usable learning rate: a finite number >= 0
    (0 takes no step, as Keras and PyTorch allow). ONE check for every way a rate
    arrives (an optimiser's constructor, its ``learning_rate`` attribute, a step's
    rate, fit's schedule, LearningRateScheduler), ``where`` naming which: nan or
    inf would write nan into every weight, a negative rate would climb the loss."""
    return check_number(rate, f"{where}: learning rate", low=0.0)


class Optimizer:
    """What the optimisers share: the learning rate, weight decay, a step count
    and per-parameter state arrays keyed 'layer/param'.

    A subclass writes ``direction(key, grad, t)``: the direction of step t for the
    parameter ``key`` from its gradient (weight decay added), and the new values
    of that parameter's state arrays, without writing them (``step`` does, once
    every update was found finite). A rule whose state holds the rate itself
    (Keras's momentum) writes ``update(key, grad, lr, t)`` instead.
    """
    # False: weight decay is L2, wd * p added to the gradient (PyTorch's SGD and Adam);
    # True: decoupled, p <- p - lr * wd * p beside the update (every Keras 3 optimiser)
    decoupled_weight_decay = False
    # True: the momentum accumulates lr * g, so a change of rate reaches only the new
    # steps (Keras's SGD and RMSprop); warm-up corrects for it (Goyal et al. 2017)
    rate_in_momentum = False

    def __init__(self, learning_rate, weight_decay):
        self._learning_rate = check_learning_rate(learning_rate,
                                                  f"{type(self).__name__}(learning_rate=...)")
        self.weight_decay = None if weight_decay is None else \
            check_number(weight_decay, f"{type(self).__name__}: weight_decay", 0.0)
        self.iterations = 0
        self.slots = {}            # {slot name: {'layer/param': array}}

    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, rate):          # callbacks and users set it between steps
        self._learning_rate = check_learning_rate(rate, f"{type(self).__name__}.learning_rate")

    def step(self, model, learning_rate=None):
        """Update every trainable parameter of ``model`` from its gradient, in place,
        all or nothing: every update and the state it leaves are computed and
        checked first, then written. A missing or non-finite gradient, or an update
        that would make a weight nan or inf, raises and changes nothing (weights,
        state arrays, iterations)."""
        self.planned_step(model, learning_rate).apply()

    def planned_step(self, model, learning_rate=None):
        """The step ``step`` takes, computed but not written: a PlannedStep whose
        ``finite`` (a flag on the device, not read yet) says whether it can be
        taken, and whose ``apply()`` takes it. minires.train reads that flag
        with the loss and the metrics: on a GPU, one wait per training step."""
        name = type(self).__name__
        lr = self.learning_rate if learning_rate is None else \
            check_learning_rate(learning_rate, f"{name}.step(learning_rate=...)")
        pairs = list(model.parameters())
        for layer, param_name in pairs:
            if param_name not in layer.grads:
                raise RuntimeError(f"{name}: layer {layer.name!r} has no gradient "
                                   f"for {param_name!r}; run model.backward(...) before step()")
        t = self.iterations + 1
        updates = [self.planned_update(layer, param_name, lr, t) for layer, param_name in pairs]
        return PlannedStep(self, pairs, updates, lr, t)

    def write(self, pairs, updates, t):
        """Subtract each update from its parameter; keep the state arrays; step t done."""
        for (layer, param_name), (update, slots, _) in zip(pairs, updates):
            layer.params[param_name] -= update
            layer.weights_changed()              # in place, so say so: a folded inference plan is stale
            key = f"{layer.name}/{param_name}"
            for kind, value in slots.items():
                self.slots.setdefault(kind, {})[key] = value
        self.iterations = t

    def planned_update(self, layer, param_name, lr, t):
        """(what step t subtracts from the parameter, its new state arrays, two flags:
        the gradient is finite, the parameter after the step would be), nothing
        written. The flags stay on the array's device, unread: ``step`` reads
        every parameter's in one go."""
        key, param, grad = f"{layer.name}/{param_name}", layer.params[param_name], layer.grads[param_name]
        with quiet_overflow():                   # a nan or inf is found by the flags, and raised as such
            if self.weight_decay and not self.decoupled_weight_decay:
                grad = grad + self.weight_decay * param
            update, slots = self.update(key, grad, lr, t)
            if self.weight_decay and self.decoupled_weight_decay:
                update = update + (lr * self.weight_decay) * param
            after = finite_flag(param - update)
        return update, slots, (finite_flag(layer.grads[param_name]), after)

    def refuse_non_finite(self, pairs, flags, lr):
        """The error for the first parameter (in ``step``'s order) whose gradient,
        or else whose value after the step, is not finite (read flag by flag: a
        step that fails may wait for the GPU)."""
        name = type(self).__name__
        for (layer, param_name), (grad_finite, after_finite) in zip(pairs, flags):
            key = f"{layer.name}/{param_name}"
            if not bool(grad_finite):
                raise FloatingPointError(f"{name}: the gradient of {key!r} holds nan or inf (the "
                                         "backward pass overflowed: training diverged; lower the "
                                         "learning rate); no weight was changed")
            if not bool(after_finite):
                raise FloatingPointError(f"{name}: a step at learning rate {lr:g} would make "
                                         f"{key!r} nan or inf (training diverged; lower the "
                                         "learning rate); no weight was changed")

    def update(self, key, grad, lr, t):
        """(what step t subtracts from the parameter, its new state arrays): the
        rate times the direction ``direction`` gives."""
        direction, slots = self.direction(key, grad, t)
        return lr * direction, slots

    def previous(self, kind, key, like):
        """The state array ``kind`` of parameter ``key`` so far: zeros before its first step."""
        value = self.slots.get(kind, {}).get(key)
        return get_array_module(like).zeros_like(like) if value is None else value

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


class PlannedStep:
    """An optimiser's step, every update computed and none written yet
    (Optimizer.planned_step). ``finite``: a 0-d flag on the parameters' device,
    not read: every gradient, and every parameter after its update, is finite."""

    def __init__(self, optimizer, pairs, updates, lr, t):
        self.optimizer, self.pairs, self.updates, self.lr, self.t = optimizer, pairs, updates, lr, t
        self.finite = flags_all(flag for _, _, flags in updates for flag in flags)

    def apply(self, finite=None):
        """Take the step, all or nothing: where ``finite`` (as the caller read it;
        None: read here) is False, raise the error of the first parameter at
        fault and write nothing."""
        if not (bool(self.finite) if finite is None else finite):
            self.optimizer.refuse_non_finite(self.pairs, [flags for _, _, flags in self.updates],
                                             self.lr)
        self.optimizer.write(self.pairs, self.updates, self.t)


class StepAsWritten:
    """The step of an optimiser whose class writes its own ``step`` (or has no
    planned_step): taken by calling that step, which checks what it writes,
    rather than bypassed. ``finite`` is True: there is nothing to read first."""
    finite = True

    def __init__(self, optimizer, model, lr):
        self.optimizer, self.model, self.lr = optimizer, model, lr

    def apply(self, finite=None):
        self.optimizer.step(self.model, self.lr)


def plan_step(optimizer, model, learning_rate):
    """``optimizer``'s step on ``model``, computed and not written (PlannedStep),
    or for an optimiser that overrides ``step``, that step to call (StepAsWritten)."""
    if isinstance(optimizer, Optimizer) and type(optimizer).step is Optimizer.step:
        return optimizer.planned_step(model, learning_rate)
    return StepAsWritten(optimizer, model, learning_rate)


def check_fraction(value, where):
    """A momentum or decay rate: a number in [0, 1)."""
    return check_number(value, where, 0.0, 1.0)


def check_epsilon(value, where):
    return check_number(value, where, 0.0, include_low=False)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, PyTorch's form:

        v <- momentum * v + g          (v = g at the first step)
        p <- p - lr * v

    (Keras writes v <- momentum * v - lr * g, p <- p + v: the same for a
    constant learning rate, different when the rate changes.)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        self.momentum = check_fraction(momentum, "SGD: momentum")

    def direction(self, key, grad, t):
        if not self.momentum:
            return grad, {}
        before = self.slots.get("velocity", {}).get(key)
        velocity = grad.copy() if before is None else before * self.momentum + grad   # first step: v = g
        return velocity, {"velocity": velocity}


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
        self.beta_1 = check_fraction(beta_1, "Adam: beta_1")
        self.beta_2 = check_fraction(beta_2, "Adam: beta_2")
        self.epsilon = check_epsilon(epsilon, "Adam: epsilon")

    def direction(self, key, grad, t):
        m, v = self.moments(key, grad)
        m_hat = m / (1 - self.beta_1 ** t)
        v_hat = v / (1 - self.beta_2 ** t)
        return m_hat / (get_array_module(grad).sqrt(v_hat) + self.epsilon), {"m": m, "v": v}

    def moments(self, key, grad):
        """The running means of g and g^2, m and v, after this gradient."""
        m = self.previous("m", key, grad) * self.beta_1 + (1 - self.beta_1) * grad
        v = self.previous("v", key, grad) * self.beta_2 + (1 - self.beta_2) * grad * grad
        return m, v


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture notes), Keras's form and defaults (compile's
    default optimizer): a running mean of g^2 scales each parameter's step,

        v <- rho v + (1 - rho) g^2
        p <- p - lr * g / sqrt(v + epsilon)

    (PyTorch adds epsilon outside the square root: the same but for tiny v.)
    """

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        self.rho = check_fraction(rho, "RMSprop: rho")
        self.epsilon = check_epsilon(epsilon, "RMSprop: epsilon")

    def direction(self, key, grad, t):
        v = self.velocity(key, grad)
        return grad / get_array_module(grad).sqrt(v + self.epsilon), {"v": v}

    def velocity(self, key, grad):
        """The running mean of g^2 after this gradient."""
        return self.previous("v", key, grad) * self.rho + (1 - self.rho) * grad * grad


# --- Keras 3's optimisers (keras/src/optimizers/{sgd,adam,rmsprop}.py) ---------------
# Keras's arguments that minires has no machinery for, with their defaults: given
# so, they are harmless; given otherwise, refused by name (``name`` is a label).
KERAS_OPTIONS = {"clipnorm": None, "clipvalue": None, "global_clipnorm": None, "use_ema": False,
                 "ema_momentum": 0.99, "ema_overwrite_frequency": None, "loss_scale_factor": None,
                 "gradient_accumulation_steps": None}


def refuse_keras_options(owner, options):
    """One TypeError for a Keras optimiser argument minires does not implement."""
    for name, value in options.items():
        if name == "name" or (name in KERAS_OPTIONS and value == KERAS_OPTIONS[name]):
            continue
        what = ("a Keras option minires does not implement (no gradient clipping, EMA, loss "
                "scaling or gradient accumulation); leave it out" if name in KERAS_OPTIONS
                else "not an argument of it")
        raise TypeError(f"{owner}: {name}={value!r} is {what}")


class KerasSGD(Optimizer):
    """``keras.optimizers.SGD``, Keras 3's form: the rate enters the momentum,

        m <- momentum m - lr g
        p <- p + m                      (nesterov: p <- p + momentum m - lr g)

    Without momentum p <- p - lr g, as SGD. With it, the same steps as SGD
    (PyTorch's) while the rate is constant; after a change (ReduceLROnPlateau,
    LearningRateScheduler) Keras's m keeps the old gradients at the rates they
    came with, PyTorch's velocity rescales them by the new one. Weight decay:
    decoupled.
    """
    decoupled_weight_decay = True
    rate_in_momentum = True

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 **keras_options):
        refuse_keras_options("SGD", keras_options)
        super().__init__(learning_rate, weight_decay)
        self.momentum = check_fraction(momentum, "SGD: momentum")
        self.nesterov = check_flag(nesterov, "SGD: nesterov")

    def update(self, key, grad, lr, t):
        if not self.momentum:
            return lr * grad, {}
        m = self.momentum * self.previous("momentum", key, grad) - lr * grad
        change = self.momentum * m - lr * grad if self.nesterov else m
        return -change, {"momentum": m}


class KerasAdam(Adam):
    """``keras.optimizers.Adam``, Keras 3's form: Adam's moments m and v, the bias
    correction folded into the rate, epsilon (1e-7) left uncorrected:

        alpha = lr sqrt(1 - b2^t) / (1 - b1^t)
        p <- p - alpha m / (sqrt(v) + epsilon)

    Adam (PyTorch's) divides by sqrt(v_hat) + eps instead, that is by
    (sqrt(v) + eps sqrt(1 - b2^t)) / sqrt(1 - b2^t): the same step unless
    sqrt(v) is near epsilon. amsgrad: v is replaced by its largest value so
    far. Weight decay: decoupled.
    """
    decoupled_weight_decay = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None, **keras_options):
        refuse_keras_options("Adam", keras_options)
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay)
        self.amsgrad = check_flag(amsgrad, "Adam: amsgrad")

    def update(self, key, grad, lr, t):
        xp = get_array_module(grad)
        m, v = self.moments(key, grad)
        slots = {"m": m, "v": v}
        if self.amsgrad:
            v = slots["v_hat"] = xp.maximum(self.previous("v_hat", key, grad), v)
        alpha = lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        return m * alpha / (xp.sqrt(v) + self.epsilon), slots


class KerasRMSprop(RMSprop):
    """``keras.optimizers.RMSprop``, Keras 3's form: RMSprop's rule, and

        centered: v - mean(g)^2 in the square root (mean(g) a running mean too)
        momentum: m <- momentum m + lr g / sqrt(...);  p <- p - m

    Keras's argument order (momentum third). Weight decay: decoupled.
    """
    decoupled_weight_decay = True
    rate_in_momentum = True

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, **keras_options):
        refuse_keras_options("RMSprop", keras_options)
        super().__init__(learning_rate, rho, epsilon, weight_decay)
        self.momentum = check_fraction(momentum, "RMSprop: momentum")
        self.centered = check_flag(centered, "RMSprop: centered")

    def update(self, key, grad, lr, t):
        v = self.velocity(key, grad)
        slots = {"v": v}
        if self.centered:
            mean = slots["mean_grad"] = \
                self.previous("mean_grad", key, grad) * self.rho + (1 - self.rho) * grad
            denominator = v - mean * mean + self.epsilon
        else:
            denominator = v + self.epsilon
        increment = lr * grad / get_array_module(grad).sqrt(denominator)
        if self.momentum:
            increment = slots["momentum"] = \
                self.momentum * self.previous("momentum", key, grad) + increment
        return increment, slots


OPTIMIZERS = {"adam": KerasAdam, "sgd": KerasSGD, "rmsprop": KerasRMSprop}   # Keras's defaults


def get(identifier):
    """An optimiser from Keras's name (a new Keras one, with Keras's defaults:
    KerasAdam(0.001), KerasSGD(0.01), KerasRMSprop(0.001)) or an optimiser
    object (anything with ``step``) as it is."""
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()]()
    if not isinstance(identifier, (str, type)) and callable(getattr(identifier, "step", None)):
        return identifier
    raise ValueError(f"unknown optimizer {identifier!r}; minires has 'rmsprop', 'adam', 'sgd', "
                     "or an optimizer object such as minires.optim.SGD(0.1, momentum=0.9)")


# --- learning-rate schedules: epoch (a float: 2.5 = halfway through the third) -> rate
class StepDecay:
    """lr = initial * drop ** floor(epoch / every)   (torch's StepLR)."""

    def __init__(self, initial, drop=0.1, every=30):
        self.initial = check_learning_rate(initial, "StepDecay: initial")
        self.drop = check_number(drop, "StepDecay: drop", 0.0)
        self.every = check_number(every, "StepDecay: every", 0.0, include_low=False)

    def __call__(self, epoch):
        return self.initial * self.drop ** math.floor(epoch / self.every)


class CosineDecay:
    """lr = final + (initial - final) (1 + cos(pi epoch / epochs)) / 2: from
    ``initial`` down to ``final`` along half a cosine, flat after ``epochs``."""

    def __init__(self, initial, epochs, final=0.0):
        self.initial = check_learning_rate(initial, "CosineDecay: initial")
        self.epochs = check_number(epochs, "CosineDecay: epochs", 0.0, include_low=False)
        self.final = check_learning_rate(final, "CosineDecay: final")

    def __call__(self, epoch):
        progress = min(epoch / self.epochs, 1.0)
        return self.final + (self.initial - self.final) * (1 + math.cos(math.pi * progress)) / 2
