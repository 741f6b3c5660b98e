"""Cross-entropy losses of a classifier, from its logits or from its probabilities.

    L = -(1/N) sum_n sum_k t[n, k] log p[n, k]

p (N, K): the class probabilities; t (N, K): the targets, one-hot or soft rows
(class indices (N,) become one-hot rows). Keras's names and defaults:

  SoftmaxCrossEntropy()                          logits; indices or (N, K) targets
  CategoricalCrossentropy(from_logits=False)     (N, K) targets
  SparseCategoricalCrossentropy(from_logits=False)   class indices (N,)

from_logits=True: the outputs are logits z and p = softmax(z) is taken here,
stably. from_logits=False: the outputs are already probabilities (the model
ends with a softmax, as Keras's applications do). ``CrossEntropy`` derives
both, and the stable gradient for the second: ``backward(logits_grad=True)``.
"""

from .backend import get_array_module, is_array, quiet_overflow
from .utils import all_true, finite_flag

EPSILON = 1e-7                # Keras's backend.epsilon(): probabilities are clipped to [eps, 1 - eps]
ROW_SUM_TOLERANCE = 1e-3      # rows of probabilities further than this from 1 are not a softmax's


def log_softmax(z):
    """log softmax(z) along axis 1: log p = z - logsumexp(z), where
    logsumexp(z) = m + log sum_k e^(z_k - m), m = max_k z_k, so that no exp()
    overflows and no log(0) appears. A logit more than the float range below
    the largest (-3e38 against 3e38) gives log p = -inf, exactly where p is 0:
    numpy's overflow warning for it is expected, so silenced."""
    xp = get_array_module(z)
    with quiet_overflow():
        shifted = z - z.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def are_probabilities(p):
    """Whether the rows of ``p`` (N, K) lie in [0, 1] and sum to 1: what a softmax
    gives. A 0-d boolean array on p's device, not read yet."""
    deviation = get_array_module(p).abs(p.sum(axis=1) - 1)
    return ~((p < 0).any() | (p > 1).any() | (deviation > ROW_SUM_TOLERANCE).any())


# A loss checks the values of its inputs at every forward (labels in range, weights
# >= 0 ...). On a GPU each check read on the host waits for all the work queued
# before it, so forward queues them (each a 0-d boolean on the device and the
# function that raises its error) and reads them all at once.
def check_later(checks, good, refuse):
    """Queue the check ``good`` (True: the values pass) in ``checks``, or with
    ``checks`` None read it now; ``refuse()`` raises the error where it is False."""
    if checks is None:
        if not bool(good):
            refuse()
    else:
        checks.append((good, refuse))


def run_checks(checks):
    """Read every queued check at once; raise the first failing one's error."""
    if not all_true(good for good, _ in checks):
        next(refuse for good, refuse in checks if not bool(good))()


def terms(t, log_p):
    """-t log p, entry by entry; where t is 0 its term is 0, even where log p is
    -inf (p underflowed): not 0 * -inf = nan."""
    return -(t * get_array_module(t).where(t == 0, 0, log_p))


class CrossEntropy:
    """The cross-entropy both ways; below, one row, without the 1/N, s = sum_k t_k
    (s = 1 for one-hot and soft targets).

    From logits (from_logits=True):
        L = -sum_k t_k log p_k = -sum_k t_k z_k + s logsumexp(z)
        dL/dz_j = -t_j + s p_j            (d logsumexp(z)/dz_j = p_j)
    so dL/dz = (p - t)/N: softmax and log cancel. The factor s keeps the
    gradient exact for a target row that does not sum to 1.

    From probabilities (from_logits=False), as Keras does:
        L = -sum_k t_k log clip(p_k),     clip to [eps, 1 - eps], eps = 1e-7
    so a p_k that rounded to 0 costs log(1e-7) ~ -16 instead of log(0) = -inf, and
        dL/dp_k = -t_k / p_k   where clip left p_k alone,  0 where it cut p_k
    (clip is flat there; that is also the gradient Keras's autodiff takes).
    This is the less stable route: it divides by p, and the softmax's backward
    then multiplies by p again. Where p_k underflowed (p_k ~ 1e-87 for a
    logit 200 below the largest), the product is ~0 instead of -1, or NaN
    (0 * inf) without the clip. (Keras also divides p by its row sum first;
    for the rows that sum to 1 accepted here, that changes the value not at
    all and dL/dp by a constant per row, which the softmax's backward removes.)

    The stable route, ``backward(logits_grad=True)``: dL/dz for the logits z
    of the softmax that produced p. With dp_i/dz_k = p_i ([i = k] - p_k):
        dL/dz_k = sum_i (-t_i / p_i) p_i ([i = k] - p_k) = -t_k + p_k s
    The p_i cancel before anything is divided: (p - t)/N again, exact even
    where p underflowed, and the gradient of the unclipped loss. The graph
    then skips the softmax's own backward (it is already applied).

    Sample weights (fit's sample_weight and class_weight), Keras's reduction
    'sum_over_batch_size': L = sum_n w_n L_n / N, divided by the batch size,
    not by the weights' sum. A weight scales its target row, t_n <- w_n t_n:
    every formula above then holds with s = w_n (that row's sum), so the
    value is sum_n w_n L_n / N and dL/dz_n = w_n (p_n - t_n) / N, no other code.
    """
    # Which targets a loss takes: True class indices, False (N, K) rows,
    # None either (an int array is indices, a float array rows).
    sparse = None

    def __init__(self, from_logits):
        if from_logits not in (True, False):
            raise TypeError(f"{type(self).__name__}: from_logits must be True or False, "
                            f"got {from_logits!r}")
        self.from_logits = bool(from_logits)
        self.probs = self.targets = None        # from the last forward, for backward

    def forward(self, outputs, targets, sample_weight=None, checks=None):
        """The mean loss of the batch; sample_weight: None or one weight >= 0 per row.
        ``checks``: None reads the checks of the inputs' values here, in one go,
        before the loss is computed; a list gets them queued instead, for the
        caller to read with its other values (minires.train: one wait for a GPU
        per training step) and to raise from (run_checks) before using the loss."""
        t = self.checked_targets(outputs, targets, sample_weight, checks)
        p, log_p = self.probabilities(outputs)
        self.probs, self.targets = p, t
        # each term divided by N before the sum, so that a mean below the float range is not inf
        return terms(t, log_p / outputs.shape[0]).sum()

    def sample_losses(self, outputs, targets):
        """Each sample's loss, (N,): Keras's loss functions (categorical_crossentropy ...)."""
        t = self.checked_targets(outputs, targets, None, None)
        return terms(t, self.probabilities(outputs)[1]).sum(axis=1)

    def checked_targets(self, outputs, targets, sample_weight, checks):
        """The (N, K) float targets, each row times its sample's weight, once the
        inputs' checks pass (read here, in one go, with ``checks`` None; else
        queued there, as forward says)."""
        xp = get_array_module(outputs)
        queue = [] if checks is None else checks
        self._check_outputs(outputs)
        t = self._targets(targets, outputs.shape, outputs.dtype, xp, queue)
        if sample_weight is not None:
            weights = sample_weights(sample_weight, len(t), type(self).__name__, queue)
            t = t * xp.asarray(weights, dtype=outputs.dtype)[:, None]
        self.check_output_values(outputs, queue)
        if checks is None:
            run_checks(queue)
        return t

    def probabilities(self, outputs):
        """(p, log p) of the outputs: softmax'd logits, or probabilities as they are."""
        xp = get_array_module(outputs)
        if self.from_logits:
            log_p = log_softmax(outputs)
            return xp.exp(log_p), log_p
        return outputs, xp.log(xp.clip(outputs, EPSILON, 1 - EPSILON))

    def backward(self, dloss=1.0, logits_grad=False):
        """dL/d(outputs), or with ``logits_grad=True`` (from_logits=False only)
        dL/dz for the logits z of the softmax that produced the probabilities."""
        name = type(self).__name__
        if logits_grad and self.from_logits:
            raise ValueError(f"{name}: logits_grad=True is for losses on probabilities "
                             "(from_logits=False); this loss takes logits, and backward() "
                             "already returns dL/dlogits")
        if self.probs is None:
            raise RuntimeError(f"{name}: backward called before forward")
        p, t, n = self.probs, self.targets, self.probs.shape[0]
        if self.from_logits or logits_grad:
            return dloss * (p * t.sum(axis=1, keepdims=True) - t) / n
        clipped = get_array_module(p).clip(p, EPSILON, 1 - EPSILON)
        return dloss * -(t / clipped) * (clipped == p) / n     # (clipped == p): clip's slope, 1 or 0

    __call__ = forward

    # --- input checks --------------------------------------------------------
    def _what(self):
        return "logits" if self.from_logits else "probabilities"

    def _check_outputs(self, outputs):
        if not is_array(outputs) or outputs.ndim != 2 or outputs.dtype.kind != "f":
            raise ValueError(f"{type(self).__name__}: {self._what()} must be a float array of "
                             "shape (N, classes), got "
                             f"{getattr(outputs, 'shape', type(outputs).__name__)} "
                             f"{getattr(outputs, 'dtype', '')}")

    def check_output_values(self, outputs, checks):
        """Queue the checks of the outputs' values in ``checks``."""
        if not self.from_logits:
            self._check_probabilities(outputs, checks)

    def _check_probabilities(self, p, checks):
        """Logits passed to a loss that expects probabilities give a finite, wrong
        loss (log of a clipped logit) and a wrong gradient: say so instead."""
        def refuse():
            sums = p.sum(axis=1)
            name = type(self).__name__
            raise ValueError(
                f"{name}: from_logits=False expects probabilities (in [0, 1], each row summing "
                f"to 1), got values from {float(p.min()):.4g} to {float(p.max()):.4g} and row sums "
                f"from {float(sums.min()):.4g} to {float(sums.max()):.4g}: they look like logits. "
                f"Use {name}(from_logits=True) for logits, or end the model with a softmax")
        if p.size:
            check_later(checks, are_probabilities(p), refuse)

    def _targets(self, labels, shape, dtype, xp, checks):
        """(N, K) float targets from class indices or from one-hot/probability rows."""
        labels = xp.asarray(labels)
        if self.check_targets(labels, shape, checks=checks):
            if labels.ndim == 2:                 # a column, as keras.datasets.cifar10 gives
                labels = labels[:, 0]
            return (labels[:, None] == xp.arange(shape[1])[None, :]).astype(dtype)
        return labels.astype(dtype)

    def check_targets(self, labels, shape, where=None, checks=None):
        """Whether ``labels`` are class indices (True) or target rows (False) for
        outputs of ``shape`` (N, K); one clear error if they are neither: indices
        (N,) or (N, 1) of ints in [0, K), rows (N, K) of finite values >= 0.
        forward checks every batch with it (the values' checks queued in
        ``checks``); fit checks all of y before its first (``where``: the
        caller, named first)."""
        name = type(self).__name__ if where is None else f"{where}: {type(self).__name__}"
        if len(shape) != 2:
            raise ValueError(f"{name}: takes {self._what()} of shape (N, classes), but the "
                             f"model's outputs have shape {tuple(shape)}")
        n, classes = shape
        indices = labels.dtype.kind in "iu" if self.sparse is None else self.sparse
        if indices and labels.dtype.kind in "iu":
            self._check_indices(labels, n, classes, name, checks)
            return True
        if not indices and labels.dtype.kind in "fiub" and labels.shape == (n, classes):
            self._check_rows(labels, name, checks)
            return False
        expected = {None: f"int class indices of shape ({n},) or float targets of shape {shape}",
                    True: f"int class indices of shape ({n},)",
                    False: f"one-hot or probability rows of shape {shape}"}[self.sparse]
        hint = ""
        if self.sparse is True and labels.shape == (n, classes):
            hint = "; for one-hot or probability rows use CategoricalCrossentropy"
        elif self.sparse is False and labels.shape == (n,):
            hint = "; for class indices use SparseCategoricalCrossentropy"
        raise ValueError(f"{name}: labels must be {expected}, "
                         f"got {labels.dtype} {labels.shape}{hint}")

    def _check_indices(self, labels, n, classes, name, checks):
        if labels.shape not in ((n,), (n, 1)):   # (N, 1): a column, as keras.datasets.cifar10 gives
            rows = "logits" if self.from_logits else "probability"
            raise ValueError(f"{name}: {n} {rows} rows but labels of shape "
                             f"{labels.shape}; class indices must have shape ({n},)")

        def refuse():
            raise ValueError(f"{name}: labels must lie in [0, {classes}), got "
                             f"values from {int(labels.min())} to {int(labels.max())}")
        if n:
            check_later(checks, ((labels >= 0) & (labels < classes)).all(), refuse)

    def _check_rows(self, targets, name, checks):
        """Target rows are weights of log p: a negative or nan one would reward a
        wrong class, or make every weight nan."""
        def refuse():
            if not bool(finite_flag(targets)):
                raise ValueError(f"{name}: target rows (one-hot or probabilities) must be finite, "
                                 "got nan or inf")
            raise ValueError(f"{name}: target rows (one-hot or probabilities) must be >= 0, "
                             f"got entries down to {float(targets.min()):.4g}")
        check_later(checks, finite_flag(targets) & (targets >= 0).all(), refuse)


def sample_weights(sample_weight, n, where, checks=None):
    """``sample_weight`` as one weight per sample, shape (n,), if it is one: an
    array (n,) or (n, 1) of finite numbers >= 0 (a negative weight would reward
    a sample's errors, a nan one make every weight nan). ``checks``: where to
    queue the values' check (None: read now)."""
    xp = get_array_module(sample_weight)
    weights = xp.asarray(sample_weight)
    if weights.shape not in ((n,), (n, 1)) or weights.dtype.kind not in "fiub":
        raise ValueError(f"{where}: sample_weight must hold one number per sample, shape "
                         f"({n},), got {weights.dtype} of shape {tuple(weights.shape)}")
    weights = weights.reshape(n)

    def refuse():
        raise ValueError(f"{where}: sample_weight must be finite and >= 0, got values from "
                         f"{float(weights.min()):.4g} to {float(weights.max()):.4g}")
    check_later(checks, finite_flag(weights) & (weights >= 0).all(), refuse)
    return weights


class SoftmaxCrossEntropy(CrossEntropy):
    """Cross-entropy of logits, p = softmax(z) taken stably: dL/dz = (p - t)/N.

    Labels: class indices (N,) of ints in [0, K), or targets (N, K) (one-hot
    or probabilities, rows summing to 1). See ``CrossEntropy`` for the maths.

    refuse_probabilities: raise for outputs (over two classes or more) that are
    probabilities already, rows in [0, 1] summing to 1. fit sets it when it
    picks this loss for a model with no softmax that it can see: such outputs
    mean a softmax it cannot see (one behind a Flatten), which a second would
    follow silently.
    """

    def __init__(self, refuse_probabilities=False):
        super().__init__(from_logits=True)
        self.refuse_probabilities = refuse_probabilities

    def check_output_values(self, outputs, checks):
        def refuse():
            raise ValueError("SoftmaxCrossEntropy: the model's outputs are probabilities already "
                             "(rows in [0, 1] summing to 1), but no softmax was seen at its output, "
                             "so this loss, picked for logits, would apply a second one; give the "
                             "loss: 'sparse_categorical_crossentropy' (class indices) or "
                             "'categorical_crossentropy' (one-hot rows), which take probabilities")
        if self.refuse_probabilities and outputs.shape[1] > 1:
            check_later(checks, ~are_probabilities(outputs), refuse)


class KerasCall:
    """Keras's argument order for a loss object's call: ``loss_fn(y_true, y_pred)``
    (``forward`` takes minires's order, outputs first, as every layer does)."""

    def __call__(self, y_true, y_pred, sample_weight=None):
        return self.forward(y_pred, y_true, sample_weight)


class CategoricalCrossentropy(KerasCall, CrossEntropy):
    """Keras's categorical_crossentropy: targets (N, K), one-hot or soft rows;
    outputs are probabilities unless ``from_logits=True``."""
    sparse = False

    def __init__(self, from_logits=False):
        super().__init__(from_logits)


class SparseCategoricalCrossentropy(KerasCall, CrossEntropy):
    """Keras's sparse_categorical_crossentropy: targets are class indices (N,)
    (or a column (N, 1)); outputs are probabilities unless ``from_logits=True``."""
    sparse = True

    def __init__(self, from_logits=False):
        super().__init__(from_logits)


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Keras's function: each sample's cross-entropy, (N,), from target rows (N, K).
    compile(loss=categorical_crossentropy) trains with CategoricalCrossentropy."""
    return CategoricalCrossentropy(from_logits).sample_losses(y_pred, y_true)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Keras's function: each sample's cross-entropy, (N,), from class indices (N,)."""
    return SparseCategoricalCrossentropy(from_logits).sample_losses(y_pred, y_true)


_BY_NAME = {"categorical_crossentropy": CategoricalCrossentropy,
            "sparse_categorical_crossentropy": SparseCategoricalCrossentropy}
_BY_FUNCTION = {categorical_crossentropy: CategoricalCrossentropy,
                sparse_categorical_crossentropy: SparseCategoricalCrossentropy}


def get(identifier):
    """A loss from Keras's name or function (a new one, on probabilities, as in
    Keras), or a loss object (anything with forward and backward, a loss of your
    own too) as it is."""
    if not isinstance(identifier, (str, type)) and all(
            callable(getattr(identifier, method, None)) for method in ("forward", "backward")):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if callable(identifier) and identifier in _BY_FUNCTION:   # keras.losses.categorical_crossentropy
        return _BY_FUNCTION[identifier]()
    raise ValueError(f"unknown loss {identifier!r}; use a loss object or one of "
                     f"{', '.join(map(repr, _BY_NAME))}")
