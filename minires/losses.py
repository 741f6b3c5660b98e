"""Softmax cross-entropy: the loss of a classifier that outputs logits."""
from .backend import get_array_module, is_array


class SoftmaxCrossEntropy:
    """L = -(1/N) sum_n sum_k t[n, k] log p[n, k],  p = softmax(z) along k.

    Shapes: logits z (N, K); labels either class indices (N,) of ints in
    [0, K) or targets t (N, K) (one-hot or probabilities, rows summing to 1).

    Stable: log p = z - logsumexp(z) with logsumexp(z) = m + log sum_k e^(z_k - m),
    m = max_k z_k, so no exp() overflows and no log(0) appears.

    Backward: for rows of t summing to 1,
        dL/dz[n, k] = (p[n, k] - t[n, k]) / N
    (d(-log p_j)/dz_k = p_k - [j = k]: softmax and log cancel into this.)
    """

    def forward(self, logits, labels):
        xp = get_array_module(logits)
        self._check(logits)
        self.targets = self._targets(labels, logits.shape, logits.dtype, xp)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.probs = xp.exp(log_p)
        return -(self.targets * log_p).sum() / logits.shape[0]

    def backward(self, dloss=1.0):
        if getattr(self, "probs", None) is None:
            raise RuntimeError("SoftmaxCrossEntropy: backward called before forward")
        return dloss * (self.probs - self.targets) / self.probs.shape[0]

    __call__ = forward

    @staticmethod
    def _check(logits):
        if not is_array(logits) or logits.ndim != 2 or logits.dtype.kind != "f":
            raise ValueError("SoftmaxCrossEntropy: logits must be a float array of shape "
                             f"(N, classes), got {getattr(logits, 'shape', type(logits).__name__)} "
                             f"{getattr(logits, 'dtype', '')}")

    @staticmethod
    def _targets(labels, shape, dtype, xp):
        """(N, K) float targets from class indices or from one-hot/probability rows."""
        n, classes = shape
        labels = xp.asarray(labels)
        if labels.dtype.kind in "iu":
            if labels.shape != (n,):
                raise ValueError(f"SoftmaxCrossEntropy: {n} logits rows but labels of shape "
                                 f"{labels.shape}; class indices must have shape ({n},)")
            if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
                raise ValueError(f"SoftmaxCrossEntropy: labels must lie in [0, {classes}), got "
                                 f"values from {int(labels.min())} to {int(labels.max())}")
            return (labels[:, None] == xp.arange(classes)[None, :]).astype(dtype)
        if labels.dtype.kind == "f" and labels.shape == (n, classes):
            return labels.astype(dtype)
        raise ValueError(f"SoftmaxCrossEntropy: labels must be int class indices of shape ({n},) "
                         f"or float targets of shape {shape}, got {labels.dtype} {labels.shape}")
