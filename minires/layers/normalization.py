"""Batch normalisation, in training mode (batch statistics) and inference mode
(moving statistics), with Keras's momentum convention."""
import numpy as np

from .. import collective, kernels
from ..backend import get_array_module
from ..kernels.channelwise import per_channel
from .base import Layer


class BatchNormalization(Layer):
    """y = gamma * xhat + beta,  xhat = (x - mean) / sqrt(var + epsilon), per channel.

    Shapes: x and y (N, ..., C) with the channel on ``axis``; gamma, beta,
    moving_mean, moving_variance (C,).  Statistics are taken over the m = N*H*W
    values of each channel.

    training=True:  mean, var are the batch's (biased var, 1/m), and
                    moving = momentum * moving + (1 - momentum) * batch
                    (Keras's convention: momentum weights the OLD value;
                    Keras also uses the biased variance here).
    training=False: mean, var are the moving statistics, constants.

    Backward, from dy, with g = dy * gamma = dL/dxhat and s = 1/sqrt(var+eps):
        dbeta = sum dy,   dgamma = sum dy * xhat
      inference: dx = g * s
      training:  x also moves the batch mean and var (dvar/dmean = 0 because
                 sum(x - mean) = 0), so
                 dL/dvar  = -(s^2 / 2) sum g xhat      dL/dmean = -s sum g
                 dx = g s + dL/dvar * 2 (x - mean) / m + dL/dmean / m
                    = (s / m) * (m g - sum g - xhat * sum(g xhat))
                    = gamma s * (dy - dbeta / m - xhat * dgamma / m)
      The last line reuses dbeta and dgamma. ``naive.batch_norm_backward``
      takes the same gradient one node of the graph at a time.
    The cache is (xhat, s, whether batch statistics were used). The
    whole-activation passes (moments, normalize, the two sums, the last line)
    are kernel functions: kernels/channelwise.py in array code, compiled by
    Numba when it is installed.
    """

    def __new__(cls, *args, synchronized=False, **kwargs):
        # Keras 3's BatchNormalization(synchronized=True) is this SyncBatchNormalization
        return super().__new__(SyncBatchNormalization if synchronized else cls)

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, name=None, synchronized=False,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"layer {self.name!r}: momentum must be in [0, 1], got {momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"layer {self.name!r}: epsilon must be positive, got {epsilon!r}")
        self.axis, self.momentum, self.epsilon = axis, momentum, epsilon
        self.synchronized = isinstance(self, SyncBatchNormalization)

    def build(self, input_shape, like_array):
        ndim = len(input_shape)
        if not -ndim <= self.axis < ndim or self.axis % ndim == 0:
            raise ValueError(f"layer {self.name!r}: axis {self.axis} is not a feature axis "
                             f"of an input of shape {tuple(input_shape)}")
        self.input_ndim = ndim
        self.channel_axis = self.axis % ndim
        channels = (self.known_size(input_shape, self.channel_axis),)
        self.add_weight("gamma", channels, "ones", like_array)
        self.add_weight("beta", channels, "zeros", like_array)
        self.add_weight("moving_mean", channels, "zeros", like_array, trainable=False)
        self.add_weight("moving_variance", channels, "ones", like_array, trainable=False)

    def _check_built_shape(self, shape):
        channels = self.params["gamma"].shape[0]
        if len(shape) != self.input_ndim or shape[self.channel_axis] != channels:
            raise ValueError(f"layer {self.name!r} was built for {self.input_ndim}-D inputs "
                             f"with {channels} channels on axis {self.axis}, got shape {tuple(shape)}")

    def forward(self, x, training=False):
        x = self._prepare(x)
        mean, inv_std, batch_stats = self.statistics(x, training)
        xhat, y = kernels.normalize(x, mean, inv_std, self.params["gamma"], self.params["beta"],
                                    self.channel_axis)      # xhat = (x - mean) s, y = gamma xhat + beta
        return y, (xhat, inv_std, batch_stats)

    def statistics(self, x, training):
        """(mean, s, whether they are the batch's) for normalising x; taking the
        batch's moves the moving statistics."""
        # A frozen BN layer runs on its moving statistics even while training (Keras 2.1.3+).
        # An empty batch has no statistics: it runs on the moving ones, unchanged.
        batch_stats = training and self.trainable and x.size > 0
        if batch_stats:
            # float16's sums overflow (65504; a count of 32*48*48 alone is 73728):
            # float16 layers take their statistics in float32, as Keras does.
            mean, var = self.batch_moments(x.astype(np.float32) if x.itemsize < 4 else x)
            self._update_moving_statistics(mean, var)
        else:
            mean, var = self.params["moving_mean"], self.params["moving_variance"]
        inv_std = 1.0 / get_array_module(x).sqrt(var + self.epsilon)
        return mean.astype(x.dtype, copy=False), inv_std.astype(x.dtype, copy=False), batch_stats

    def batch_moments(self, x):
        """Each channel's mean and (biased) variance over the batch."""
        return kernels.channel_moments(x, self.channel_axis)

    def batch_totals(self, dbeta, dgamma, xhat):
        """(sum dy, sum dy * xhat, m) over the values the batch statistics were
        taken over: this batch's."""
        return dbeta, dgamma, xhat.size // xhat.shape[self.channel_axis]

    def _update_moving_statistics(self, mean, var):
        for name, batch_value in (("moving_mean", mean), ("moving_variance", var)):
            moving = self.params[name]
            moving *= self.momentum
            moving += (1.0 - self.momentum) * batch_value
        self.weights_changed()               # written in place: a folded inference plan is stale

    def backward(self, dy, cache):
        xhat, inv_std, batch_stats = cache
        dy = self._check_grad(dy, xhat.shape)
        dbeta, dgamma = kernels.channel_sums(dy, xhat, self.channel_axis)   # sum dy, sum dy * xhat
        self.add_grad("beta", dbeta)
        self.add_grad("gamma", dgamma)
        scale = self.params["gamma"] * inv_std                                 # gamma s
        if not batch_stats:
            return dy * per_channel(scale, dy.ndim, self.channel_axis)
        sum_dy, sum_dy_xhat, m = self.batch_totals(dbeta, dgamma, xhat)
        # dx = gamma s * (dy - dbeta / m - xhat * dgamma / m), in one pass over dy and xhat
        return kernels.batch_norm_dx(dy, xhat, scale, sum_dy / m, sum_dy_xhat / m, self.channel_axis)


class SyncBatchNormalization(BatchNormalization):
    """BatchNormalization whose batch is every rank's batch together (data-parallel
    training, minires.distributed; also Keras's BatchNormalization(synchronized=True)).

    With R ranks each normalising only its own m values per channel, the
    statistics (and so the model) depend on how the batch was split: training
    on R x m samples no longer equals training on the whole batch. Here the
    statistics are those of all M = sum_r m_r values:

        mean = (1/M) sum_r S1_r          S1_r = sum of x over rank r's values
        var  = (1/M) sum_r S2_r - mean^2 S2_r = sum of x^2 over them
    Each rank takes its own mean_r and var_r (two passes, as BN) and sends
    m_r mean_r = S1_r, m_r (var_r + mean_r^2) = S2_r and m_r, in float64 (the
    subtraction above loses digits in float32): one allreduce of 2C + 1 numbers.

    Backward. The run's loss is the mean of the ranks' losses, L = (1/R) sum_r L_r,
    and each rank's backward starts from dy = dL_r/dy; DistributedOptimizer
    averages what the ranks' backwards leave. So rank r computes R dL/d(its
    values), and for a y this is dy itself. Each x of rank r moves the
    shared mean and var, which the y of EVERY rank read, so BN's derivation
    holds with its sums taken over all M values:
        dx = gamma s (dy - (sum_all dy) / M - xhat (sum_all dy xhat) / M)
    sum_all: one allreduce of the two per-channel sums (2C numbers). dgamma
    and dbeta stay this rank's sums: DistributedOptimizer averages them with
    every other gradient. On one rank this is BatchNormalization exactly.
    """

    def batch_moments(self, x):
        mean, var = super().batch_moments(x)
        if collective.size() == 1:
            return mean, var
        collective.check_same(f"SyncBatchNormalization {self.name!r}: batch statistics",
                              [f"{mean.shape[0]} channels"])
        mean, var, m = mean.astype(np.float64), var.astype(np.float64), x.size // mean.shape[0]
        (s1, s2), count = summed_over_ranks([m * mean, m * (var + mean * mean)], m)
        mean = s1 / count
        var = get_array_module(x).maximum(s2 / count - mean * mean, 0.0)   # rounding may go below 0
        return mean, var

    def batch_totals(self, dbeta, dgamma, xhat):
        sum_dy, sum_dy_xhat, m = super().batch_totals(dbeta, dgamma, xhat)
        if collective.size() == 1:
            return sum_dy, sum_dy_xhat, m
        (sum_dy, sum_dy_xhat), count = summed_over_ranks([sum_dy, sum_dy_xhat], m)
        return sum_dy.astype(dbeta.dtype), sum_dy_xhat.astype(dbeta.dtype), count


def summed_over_ranks(per_channel, count):
    """([each (C,) array summed over the ranks], the counts' sum), in float64, in
    ONE allreduce of len(per_channel) * C + 1 numbers."""
    xp = get_array_module(*per_channel)
    total = collective.allreduce_sum(xp.concatenate(
        [*(a.astype(np.float64) for a in per_channel), xp.full(1, count, np.float64)]))
    channels = per_channel[0].shape[0]
    return [total[i * channels:(i + 1) * channels] for i in range(len(per_channel))], total[-1].item()


class BatchNormReLU:
    """relu(bn(x)) as one op, for a BatchNormalization ``bn`` whose output only a
    ReLU reads (ResNet's conv-BN-ReLU): what the planner runs (minires/planner.py)
    in forwards whose backward follows. Same parameters, statistics, outputs
    and gradients as the two layers; two passes over memory fewer forward and
    one fewer backward (of seven and eight) for each pair.

    Forward: normalize writes xhat and y = max(z, 0), z = gamma xhat + beta, in
    its one pass (the ReLU's own pass is gone).
    Backward, from dy = dL/dy: the ReLU's dL/dz = dy [z > 0], then BN's backward
    above on dL/dz. The mask is recomputed from xhat inside BN's two passes (the
    sums, then dx), rather than stored or read from y. The cache is BN's.
    """

    def __init__(self, bn):
        self.bn = bn

    @property
    def params(self):
        return self.bn.params

    def forward(self, x, training=False):
        bn = self.bn
        x = bn._prepare(x)
        mean, inv_std, batch_stats = bn.statistics(x, training)
        xhat, y = kernels.normalize(x, mean, inv_std, bn.params["gamma"], bn.params["beta"],
                                    bn.channel_axis, relu=True)   # y = max(gamma xhat + beta, 0)
        return y, (xhat, inv_std, batch_stats)

    def backward(self, dy, cache):
        bn, (xhat, inv_std, batch_stats) = self.bn, cache
        dy = bn._check_grad(dy, xhat.shape)
        mask_of = (bn.params["gamma"], bn.params["beta"])          # dy counts where gamma xhat + beta > 0
        dbeta, dgamma = kernels.channel_sums(dy, xhat, bn.channel_axis, mask_of)
        bn.add_grad("beta", dbeta)
        bn.add_grad("gamma", dgamma)
        scale = bn.params["gamma"] * inv_std
        if not batch_stats:                                         # dx = gamma s dL/dz
            return kernels.batch_norm_dx(dy, xhat, scale, 0 * scale, 0 * scale, bn.channel_axis, mask_of)
        sum_dy, sum_dy_xhat, m = bn.batch_totals(dbeta, dgamma, xhat)
        return kernels.batch_norm_dx(dy, xhat, scale, sum_dy / m, sum_dy_xhat / m, bn.channel_axis,
                                     mask_of)
