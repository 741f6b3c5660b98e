"""A guided tour of backpropagation through ONE residual block.

The block is the Keras ResNet-50 identity block (``minires.blocks.identity_block``),
written out layer by layer on a tiny float64 input (2 images, 4x4 pixels,
4 channels):

    x -+-> conv 1x1 -> BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 1x1 -> BN --> Add -> ReLU -> y
       |                                                                      ^
       +-------------------------- shortcut: x itself ------------------------+

The tour, section by section:
  1. runs every layer's forward pass by hand, printing what comes out, then
     takes the loss L = sum(y * r) for a fixed random r, so that dL/dy = r;
  2. runs every layer's backward pass by hand, last layer first, printing the
     gradient each one sends back and checking it against finite differences
     (minires.gradcheck.check_layer, on the very input the layer saw);
  3. shows WHERE the shortcut's gradient is added: x feeds both the first conv
     and the Add, so dL/dx is the gradient through the convs plus the gradient
     straight down the shortcut;
  4. confirms that model.backward, which walks the same graph, gets the same;
  5. gradient-checks the whole block at once (minires.gradcheck.check_model).

    python examples/backprop_tour.py          # NumPy only, about a second
"""
import numpy as np

from minires import gradcheck
from minires.backend import floatx_scope
from minires.initializers import set_random_seed
from minires.layers import Activation, Add, BatchNormalization, Conv2D, Input, clear_session
from minires.models import Model


def heading(title):
    print(f"\n=== {title} " + "=" * max(3, 76 - len(title)))


def first_pixel(a):
    """The channels of the first pixel of the first image: a few numbers to follow."""
    return np.array2string(np.asarray(a).reshape(-1, a.shape[-1])[0], precision=2,
                           floatmode="fixed", sign=" ")


def row(tag, name, what, a):
    """One table row: shape, mean, std and the first pixel of array ``a``."""
    return (f"{tag:<5}{name:<16}{what:<21}{str(a.shape):<14}{a.mean():+.3f} {a.std():6.3f}  "
            f"{first_pixel(a)}")


def build_block():
    """The identity block, named as Keras's legacy ResNet-50 names it: the
    layers in forward order with what each computes, and the model around them."""
    he = dict(kernel_initializer="he_normal")
    steps = [
        (Conv2D(2, 1, name="res2a_branch2a", **he), "conv 1x1, 4->2 ch"),
        (BatchNormalization(name="bn2a_branch2a"), "BN (batch stats)"),
        (Activation("relu", name="relu2a_branch2a"), "ReLU"),
        (Conv2D(2, 3, padding="same", name="res2a_branch2b", **he), "conv 3x3 same, 2->2"),
        (BatchNormalization(name="bn2a_branch2b"), "BN"),
        (Activation("relu", name="relu2a_branch2b"), "ReLU"),
        (Conv2D(4, 1, name="res2a_branch2c", **he), "conv 1x1, 2->4 ch"),
        (BatchNormalization(name="bn2a_branch2c"), "BN"),
        (Add(name="res2a_add"), "main + shortcut x"),
        (Activation("relu", name="res2a_out"), "ReLU: output y"),
    ]
    x_in = Input(shape=(4, 4, 4))
    t = x_in
    for layer, _ in steps[:8]:
        t = layer(t)
    add, out = steps[8][0], steps[9][0]
    model = Model(x_in, out(add([t, x_in])), name="identity_block")   # legacy order: [main, x]
    return steps, model


def forward_by_hand(steps, x):
    """Run the layers in order; return the input each layer saw, the cache each
    call returned (what its backward will need) and the output y."""
    print(f"{'':<5}{'layer':<16}{'computes':<21}{'output shape':<14}{'mean':<7}{'std':<8}first pixel")
    print(row("", "input x", "", x))
    inputs, caches, value = [], [], x
    for i, (layer, what) in enumerate(steps, 1):
        layer_input = [value, x] if isinstance(layer, Add) else value
        inputs.append(layer_input)
        value, cache = layer.forward(layer_input, training=True)
        caches.append(cache)
        print(row(f"[{i}]", layer.name, what, value))
    return inputs, caches, value


def check(layer, layer_input):
    """Finite differences on this layer alone, at the input it really saw;
    prints the relative errors and returns the worst."""
    args = layer_input if isinstance(layer_input, list) else [layer_input]
    report = gradcheck.check_layer(layer, *args)
    print("       check_layer, relative error: " + " | ".join(
        f"{name} {error:.1e}" for name, error in report.items()))
    return report.worst()


def backward_by_hand(steps, inputs, caches, r):
    """The backward pass from dL/dy = r, layer by layer from the last, each
    layer given back the cache of its forward call. Returns
    dL/dx along the main path, the shortcut's share, the params' grads and the
    worst gradient-check error."""
    print(f"{'':<5}{'layer':<16}{'sends back':<21}{'shape':<14}{'mean':<7}{'std':<8}first pixel")
    print(row("", "dL/dy = r", "", r))
    d, saved, worst = r, {}, 0.0
    for i in range(len(steps), 0, -1):
        layer, _ = steps[i - 1]
        d = layer.backward(d, caches[i - 1])
        saved.update({f"{layer.name}/{k}": g.copy() for k, g in layer.grads.items()})
        if isinstance(layer, Add):
            d_main, d_shortcut = d
            print(row(f"[{i}]", layer.name, "dL/d(main)", d_main))
            print(f"       y = main + x has derivative 1 for both inputs: the SAME gradient goes "
                  f"to both\n       (d_main is d_shortcut: {d_main is d_shortcut}); "
                  "the shortcut's copy waits for section 3")
            d = d_main
        else:
            print(row(f"[{i}]", layer.name, "dL/d(its input)", d))
            explain(layer, d, caches[i - 1])
        worst = max(worst, check(layer, inputs[i - 1]))
    print("That is dL/dx along the main path only: x also fed the Add (section 3).")
    return d, d_shortcut, saved, worst


def explain(layer, dx, cache):
    """A line or two on what this layer's backward did; ``dx`` is what it returned."""
    if isinstance(layer, Activation):
        y = cache                                 # an activation's cache is its output
        print(f"       dy passes where y > 0 ({np.mean(y > 0):.0%} of the entries), "
              "0 elsewhere")
    elif isinstance(layer, BatchNormalization):
        print(f"       dL/dgamma = sum(dy * xhat) = {first_pixel(layer.grads['gamma'][None])}")
        print(f"       dL/dbeta  = sum(dy)        = {first_pixel(layer.grads['beta'][None])}")
        print("       dx = (s/m)(m g - sum g - xhat sum(g xhat)), g = dy*gamma; "
              f"per channel sum(dx) = {np.abs(dx.sum(axis=(0, 1, 2))).max():.0e}")
    elif isinstance(layer, Conv2D):
        print(f"       dL/dkernel {layer.grads['kernel'].shape}, norm "
              f"{np.linalg.norm(layer.grads['kernel']):.3f}; dL/dbias ~ "
              f"{np.abs(layer.grads['bias']).max():.0e} (the next BN cancels any shift)")


def main():
    clear_session()
    set_random_seed(0)
    rng = np.random.default_rng(0)
    with floatx_scope("float64"):
        steps, model = build_block()
    x = rng.standard_normal((2, 4, 4, 4))
    r = rng.standard_normal((2, 4, 4, 4))

    heading("1. Forward pass, layer by layer (training mode, float64)")
    print("x -> conv 1x1 -> BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 1x1 -> BN -> (+ x) -> ReLU")
    inputs, caches, y = forward_by_hand(steps, x)
    loss = float((y * r).sum())
    print(f"Loss L = sum(y * r) = {loss:.6f}, so the gradient arriving at y is dL/dy = r")

    heading("2. Backward pass, layer by layer (last layer first)")
    dx_main, dx_shortcut, hand_grads, worst_check = backward_by_hand(steps, inputs, caches, r)

    heading("3. Where the shortcut's gradient is added")
    print("x feeds two layers, res2a_branch2a (main path) and res2a_add (shortcut), so dL/dx")
    print("is the SUM of the gradients coming back along each (Model.backward's _accumulate):")
    dx = dx_main + dx_shortcut
    print(f"  through the convs  {first_pixel(dx_main)}  norm {np.linalg.norm(dx_main):.4f}")
    print(f"  down the shortcut  {first_pixel(dx_shortcut)}  norm {np.linalg.norm(dx_shortcut):.4f}")
    print(f"  dL/dx = their sum  {first_pixel(dx)}  norm {np.linalg.norm(dx):.4f}")
    print("The shortcut's part reaches x through no conv and no BN: however small the main")
    print("path's gradient becomes in a deep network, this one still arrives.")

    heading("4. model.backward walks the same graph")
    model.forward(x, training=True)
    model_dx = model.backward(r)
    print(f"max |model.backward dL/dx - hand dL/dx| = {np.abs(model_dx - dx).max():.1e}")
    param_diff = max(np.abs(layer.grads[k] - hand_grads[f"{layer.name}/{k}"]).max()
                     for layer, _ in steps for k in layer.grads)
    print(f"max |difference| over every parameter gradient = {param_diff:.1e}")

    heading("5. Gradient check of the whole block (check_model)")
    report = gradcheck.check_model(model, x)
    for name, error in report.items():
        if report.magnitude[name] < 1e-6:        # both ~0: a ratio of rounding noise
            print(f"  {name:<24}zero gradient (magnitude {report.magnitude[name]:.0e}): "
                  "a bias just before a training-mode BN")
        else:
            print(f"  {name:<24}relative error {error:.1e}")
            worst_check = max(worst_check, error)
    verdict = "the backward passes are right" if worst_check <= 1e-7 else "A BACKWARD PASS IS WRONG"
    print(f"\nWorst relative error of all the checks: {worst_check:.1e} ({verdict}).")


if __name__ == "__main__":
    main()
