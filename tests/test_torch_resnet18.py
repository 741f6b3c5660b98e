"""TorchResNet18 (the PyTorch tutorials' CIFAR ResNet-18) and minires.io.torch_weights.

Without PyTorch: the parameter counts, the layout (symmetric padding, no conv
biases, PyTorch's BN settings), the state-dict export and the strict loader,
and a .safetensors reader that refuses every malformed file it is shown.

With PyTorch (a dev-only oracle; those tests skip without it): the network as
the tutorial writes it, random weights, saved from its own ``state_dict()`` to
a .safetensors file packed here by hand from the format's description (no code
shared with minires's reader) and to an .npz; minires's network loaded from
the file agrees in float64 on the logits, the loss, dL/dx and every parameter
gradient of a training-mode step, on the moving statistics after it, and on
the logits in inference mode.
"""
import json
import struct

import numpy as np
import pytest

from minires import backend
from minires.applications import TorchResNet, TorchResNet18
from minires.backend import floatx_scope
from minires.io.torch_weights import (TorchWeightsError, load_torch_state_dict, read_safetensors,
                                      read_state_dict, torch_state_dict, write_safetensors)
from minires.layers import BatchNormalization, Conv2D
from minires.losses import SoftmaxCrossEntropy

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:                  # the classes below are then defined but never built
    torch = F = None
    nn = type("nn", (), {"Module": object})
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch (a dev-only oracle)")

TOL = 1e-10                          # float64 agreement, relative to each tensor's largest entry
TRAINABLE, MOVING = 11_173_962, 9_600


# --- the tutorial's PyTorch network, as the tutorial writes it ------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != self.expansion * planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x):
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, width=64):    # width: the small tests
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)


def random_torch_resnet(seed, blocks=(2, 2, 2, 2), width=64, classes=10):
    """The tutorial's network in float64, PyTorch's random init, and random BN
    weights and running statistics (not 1 and 0, so that each one matters)."""
    torch.manual_seed(seed)
    net = ResNet(BasicBlock, list(blocks), classes, width).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return net


# --- .safetensors by hand, from the format's description -------------------------------
ST_NAMES = {"float64": "F64", "float32": "F32", "int64": "I64"}


def pack_safetensors(path, tensors):
    """u64 little-endian header length, the JSON header, then every tensor's
    little-endian bytes back to back (written from torch tensors)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, tensor in tensors.items():
        array = tensor.detach().contiguous().numpy()
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": ST_NAMES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    raw_file(path, json.dumps(header), b"".join(blobs))


def raw_file(path, header_text, data, header_len=None):
    text = header_text.encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


# --- comparing minires with PyTorch ----------------------------------------------------
def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def rel_error(mine, theirs):
    """max |mine - theirs| / max |theirs|: one figure per tensor."""
    theirs = theirs.detach().numpy() if torch is not None and isinstance(theirs, torch.Tensor) else theirs
    assert mine.shape == theirs.shape, f"shape {mine.shape} != {theirs.shape}"
    return float(np.abs(mine - theirs).max() / max(np.abs(theirs).max(), 1e-300))


def minires_slot(model, key):
    """(layer, param name, axes turning the torch array into minires's layout) for a
    torch key, spelled out here rather than taken from minires.io.torch_weights."""
    path, attr = key.rsplit(".", 1)
    layer = model.get_layer(path)
    if isinstance(layer, Conv2D):
        return layer, "kernel", (2, 3, 1, 0)          # (out, in, kh, kw) -> (kh, kw, in, out)
    if isinstance(layer, BatchNormalization):
        return layer, {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                       "running_var": "moving_variance"}[attr], None
    return layer, {"weight": "kernel", "bias": "bias"}[attr], (1, 0) if attr == "weight" else None


def as_minires(tensor, axes):
    array = tensor.detach().numpy()
    return array if axes is None else array.transpose(axes)


def training_step_errors(net, model, x, labels):
    """One training-mode step in both; {what: relative error}."""
    net.train()
    xt = torch.tensor(nchw(x), requires_grad=True)
    logits_t = net(xt)
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()

    logits = model.forward(x, training=True)
    ce = SoftmaxCrossEntropy()
    loss = ce.forward(logits, labels)
    dx = model.backward(ce.backward())

    errors = {"logits (training)": rel_error(logits, logits_t),
              "loss": abs(loss - loss_t.item()) / abs(loss_t.item()),
              "dL/dx": rel_error(dx, xt.grad.permute(0, 2, 3, 1))}
    for key, p in net.named_parameters():
        layer, name, axes = minires_slot(model, key)
        errors[f"d/d {key}"] = rel_error(layer.grads[name], as_minires(p.grad, axes))
    return errors


# --- without PyTorch: counts and layout ------------------------------------------------
def test_parameter_counts_are_the_tutorials():
    model = TorchResNet18()
    assert model.count_trainable_params() == TRAINABLE
    assert model.count_params() - model.count_trainable_params() == MOVING
    assert model.count_params() == 11_183_562


def test_layout_pads_symmetrically_without_conv_biases():
    model = TorchResNet18()
    pad, conv = model.get_layer("layer2.0.conv1_pad"), model.get_layer("layer2.0.conv1")
    assert pad.padding == ((1, 1), (1, 1))
    assert (conv.padding, conv.strides, conv.kernel_size) == ("valid", (2, 2), (3, 3))
    short = model.get_layer("layer2.0.downsample.0")
    assert (short.padding, short.strides, short.kernel_size) == ("valid", (2, 2), (1, 1))
    assert all(not layer.use_bias for layer in model.layers if isinstance(layer, Conv2D))
    bns = [layer for layer in model.layers if isinstance(layer, BatchNormalization)]
    assert len(bns) == 20 and all((bn.epsilon, bn.momentum) == (1e-5, 0.9) for bn in bns)
    shapes = {name: model.get_layer(name).output.shape for name in
              ("relu", "layer1.1.relu2", "layer2.1.relu2", "layer3.1.relu2", "layer4.1.relu2", "fc")}
    assert shapes == {"relu": (None, 32, 32, 64), "layer1.1.relu2": (None, 32, 32, 64),
                      "layer2.1.relu2": (None, 16, 16, 128), "layer3.1.relu2": (None, 8, 8, 256),
                      "layer4.1.relu2": (None, 4, 4, 512), "fc": (None, 10)}
    assert [n for n in ("layer1.0.downsample.0", "layer2.0.downsample.0", "layer2.1.downsample.0")
            if n in {layer.name for layer in model.layers}] == ["layer2.0.downsample.0"]


def test_odd_sizes_follow_pytorchs_formula():
    """out = floor((n + 2 - 3) / 2) + 1: 15 -> 8 -> 4 -> 2, 9 -> 5 -> 3 -> 2."""
    model = TorchResNet(blocks=(1, 1, 1, 1), width=2, input_shape=(15, 9, 3))
    assert model.get_layer("layer4.0.relu2").output.shape == (None, 2, 2, 16)
    assert model.get_layer("layer2.0.downsample.0").output.shape == (None, 8, 5, 4)


# --- without PyTorch: export, strict loading ------------------------------------------
def randomize(model, rng):
    """Every weight random: kernels and offsets of either sign, scales and variances positive."""
    for layer, name in model.parameters(trainable_only=False):
        param = layer.params[name]
        if name in ("gamma", "moving_variance"):
            param[...] = rng.uniform(0.5, 1.5, param.shape)
        else:
            param[...] = rng.standard_normal(param.shape) * 0.3


def tiny_model(seed=None, **kwargs):
    with floatx_scope("float64"):
        model = TorchResNet(blocks=(1, 1, 1, 1), width=2, input_shape=(8, 8, 3), classes=3, **kwargs)
    if seed is not None:
        randomize(model, np.random.default_rng(seed))
    return model


def snapshot(model):
    return {(layer.name, name): layer.params[name].copy()
            for layer, name in model.parameters(trainable_only=False)}


def assert_same_weights(a, b):
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=str(key))


def test_export_names_and_layouts():
    state = torch_state_dict(tiny_model(seed=1))
    assert state["conv1.weight"].shape == (2, 3, 3, 3)                # (out, in, kh, kw)
    assert state["layer2.0.downsample.0.weight"].shape == (4, 2, 1, 1)
    assert state["layer2.0.downsample.1.running_var"].shape == (4,)
    assert state["fc.weight"].shape == (3, 16) and state["fc.bias"].shape == (3,)
    assert state["bn1.num_batches_tracked"].shape == () and state["bn1.num_batches_tracked"].dtype == np.int64
    assert len(state) == 12 * 5 + 12 + 2      # 12 BNs (with num_batches_tracked), 12 convs, fc
    keys = {k.rsplit(".", 1)[0] for k in state}
    assert "layer1.0.downsample.0" not in keys and "layer3.0.downsample.1" in keys


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_state_dict_round_trip(tmp_path, suffix):
    source, target = tiny_model(seed=1), tiny_model(seed=2)
    path = tmp_path / f"w{suffix}"
    state = torch_state_dict(source)
    if suffix == ".safetensors":
        write_safetensors(path, state)
    else:
        np.savez(path, **state)
    assert set(read_state_dict(path)) == set(state)
    load_torch_state_dict(target, path)
    assert_same_weights(snapshot(source), snapshot(target))


def test_loads_into_float32_and_from_a_dict():
    state = torch_state_dict(tiny_model(seed=1))
    model = TorchResNet(blocks=(1, 1, 1, 1), width=2, input_shape=(8, 8, 3), classes=3)
    load_torch_state_dict(model, state)
    assert model.get_layer("fc").params["kernel"].dtype == np.float32
    np.testing.assert_allclose(model.get_layer("fc").params["kernel"], state["fc.weight"].T, rtol=1e-7)


def test_dotted_names_work_in_checkpoints_and_summary(tmp_path):
    """PyTorch's module paths as layer names: minires's own .npz keys become
    'layer2.0.downsample.0/kernel', and summary() prints them."""
    source, target = tiny_model(seed=1), tiny_model(seed=2)
    source.save_weights(tmp_path / "ckpt.npz")
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as data:
        assert "layer2.0.downsample.0/kernel" in data.files
    target.load_weights(tmp_path / "ckpt.npz")
    assert_same_weights(snapshot(source), snapshot(target))
    lines = []
    source.summary(print_fn=lines.append)
    assert "layer2.0.downsample.1 (BatchNormalization)" in lines[0]


def test_a_misfit_lists_every_problem_and_changes_nothing():
    model = tiny_model(seed=1)
    state = torch_state_dict(tiny_model(seed=2))
    del state["fc.bias"]
    state["head.weight"] = np.zeros((3, 16))
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].transpose(2, 3, 1, 0).copy()[:, :, :2]
    state["bn1.num_batches_tracked"] = np.zeros(2, dtype=np.int64)
    state["layer3.0.bn2.running_var"] = state["layer3.0.bn2.running_var"].astype(np.int64)
    before = snapshot(model)
    with pytest.raises(TorchWeightsError) as info:
        load_torch_state_dict(model, state)
    message = str(info.value)
    assert len(info.value.problems) == 5, message
    for needle in ("5 problems, nothing loaded", "missing: 'fc.bias'", "unexpected: 'head.weight'",
                   "'layer1.0.conv1.weight': shape (3, 3, 2, 2)", "needs (2, 2, 3, 3)",
                   "'bn1.num_batches_tracked'", "'layer3.0.bn2.running_var': dtype int64"):
        assert needle in message, message
    assert_same_weights(before, snapshot(model))


def test_a_wrapped_models_prefix_gets_a_hint():
    state = {f"module.{k}": v for k, v in torch_state_dict(tiny_model(seed=1)).items()}
    with pytest.raises(TorchWeightsError, match=r"start with 'module\.'"):
        load_torch_state_dict(tiny_model(), state)


def test_weights_argument_loads(tmp_path):
    path = tmp_path / "w.safetensors"
    source = tiny_model(seed=3)
    write_safetensors(path, torch_state_dict(source))
    assert_same_weights(snapshot(source), snapshot(tiny_model(weights=path)))


@pytest.mark.parametrize("name,match", [("w.pt", "pickled"), ("w.pth", "pickled"),
                                        ("w.h5", "must be a .safetensors or .npz")])
def test_other_files_are_refused(tmp_path, name, match):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04")
    with pytest.raises(TorchWeightsError, match=match):
        read_state_dict(path)


def test_a_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(TorchWeightsError, match="not a readable .npz"):
        read_state_dict(path)


# --- without PyTorch: the .safetensors reader -------------------------------------------
def test_reads_every_dtype_scalars_empties_and_bf16(tmp_path):
    arrays = {"f64": np.arange(6.0).reshape(2, 3), "f32": np.float32([1.5, -2]),
              "f16": np.float16([0.25]), "i64": np.array(7, dtype=np.int64),
              "u8": np.uint8([1, 255]), "flag": np.array([True, False]), "empty": np.zeros((0, 4))}
    path = tmp_path / "all.safetensors"
    write_safetensors(path, arrays, metadata={"format": "np"})
    back = read_safetensors(path)
    assert set(back) == set(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert n % 8 == 0 and json.loads(data[8:8 + n])["__metadata__"] == {"format": "np"}

    bf16 = np.float32([1.5, -2.0, 3.140625]).view(np.uint32) >> 16      # exact in bfloat16
    raw_file(tmp_path / "bf16.safetensors",
             json.dumps({"b": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}),
             bf16.astype("<u2").tobytes())
    np.testing.assert_array_equal(read_safetensors(tmp_path / "bf16.safetensors")["b"],
                                  np.float32([1.5, -2.0, 3.140625]))


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


BAD_FILES = [
    ("unknown dtype", {"w": entry("F8_E4M3", [2], 0, 2)}, bytes(2), "dtype 'F8_E4M3'", "w"),
    ("size mismatch", {"w": entry("F32", [3], 0, 8)}, bytes(8), "needs 12 bytes", "w"),
    ("out of range", {"w": entry("F32", [2], 0, 8)}, bytes(4), "run past the 4 bytes", "w"),
    ("overlap", {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, bytes(12),
     "overlap those of tensor 'a'", "b"),
    ("gap", {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, bytes(12),
     "belong to no tensor", "b"),
    ("trailing bytes", {"a": entry("F32", [1], 0, 4)}, bytes(8), "4 bytes after the last", None),
    ("negative offset", {"w": entry("F32", [1], -4, 0)}, bytes(4), "data_offsets must be", "w"),
    ("bad shape", {"w": entry("F32", [-1], 0, 4)}, bytes(4), "shape must be", "w"),
    ("extra field", {"w": {**entry("F32", [1], 0, 4), "x": 1}}, bytes(4), "exactly 'dtype'", "w"),
    ("metadata", {"__metadata__": {"n": 1}}, b"", "'__metadata__' must map strings", None),
]


@pytest.mark.parametrize("header,data,match,key", [case[1:] for case in BAD_FILES],
                         ids=[case[0] for case in BAD_FILES])
def test_malformed_safetensors_are_refused(tmp_path, header, data, match, key):
    path = tmp_path / "bad.safetensors"
    raw_file(path, json.dumps(header), data)
    with pytest.raises(TorchWeightsError, match=match) as info:
        read_safetensors(path)
    assert str(path) in str(info.value)
    if key is not None:
        assert f"(tensor {key!r})" in str(info.value)


@pytest.mark.parametrize("text,data,header_len,match", [
    ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     '"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', bytes(8), None, "more than once"),
    ("not json", b"", None, "does not start with"),
    ("{nope", b"", None, "not valid UTF-8 JSON"),
    ("{}", b"", 400, "only 2 follow it"),
    ("{}", b"", 2**40, "more than the"),
], ids=["duplicate name", "not an object", "broken JSON", "truncated", "huge header"])
def test_broken_headers_are_refused(tmp_path, text, data, header_len, match):
    path = tmp_path / "bad.safetensors"
    raw_file(path, text, data, header_len)
    with pytest.raises(TorchWeightsError, match=match):
        read_safetensors(path)


def test_a_short_file_is_refused_and_the_model_kept(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x02\x00")
    model = tiny_model(seed=1)
    before = snapshot(model)
    with pytest.raises(TorchWeightsError, match="fewer than the 8"):
        load_torch_state_dict(model, path)
    assert_same_weights(before, snapshot(model))


def test_the_safetensors_package_agrees(tmp_path):
    """Where the optional ``safetensors`` package is installed: each side reads the other's file."""
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"a": np.arange(12.0).reshape(3, 4), "b": np.int64([1, 2]), "c": np.float32([0.5])}
    st.save_file(arrays, str(tmp_path / "theirs.safetensors"))
    write_safetensors(tmp_path / "ours.safetensors", arrays)
    for name, back in [("theirs", read_safetensors(tmp_path / "theirs.safetensors")),
                       ("ours", st.load_file(str(tmp_path / "ours.safetensors")))]:
        for key, value in arrays.items():
            np.testing.assert_array_equal(back[key], value, err_msg=f"{name}: {key}")


# --- with PyTorch ---------------------------------------------------------------------
@pytest.fixture
def numpy_kernels():
    """The float64 comparisons run on the readable NumPy kernels, the reference
    (test_numba_kernels.py holds the compiled ones to them): a whole ResNet-18
    step takes a few seconds there, and the network and the loader are what is
    tested here. (Run on the Numba path, the figures are of the same size.)"""
    previous = backend.kernel_path()
    backend.set_kernel_path("numpy")
    yield
    backend.set_kernel_path(previous)


@needs_torch
def test_counts_and_keys_match_pytorchs():
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == TRAINABLE
    assert sum(b.numel() for k, b in net.named_buffers() if not k.endswith("num_batches_tracked")) == MOVING
    ours = torch_state_dict(TorchResNet18())
    theirs = net.state_dict()
    assert list(ours) and set(ours) == set(theirs)
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}


@needs_torch
def test_resnet18_agrees_with_pytorch_in_float64(tmp_path, numpy_kernels):
    """The acceptance test: batch 2 of 16x16 images (the widths are ResNet-18's;
    layer4 is 2x2, so its BNs see m = 8 values per channel)."""
    net = random_torch_resnet(seed=0)
    path = tmp_path / "resnet18.safetensors"
    pack_safetensors(path, net.state_dict())
    with floatx_scope("float64"):
        model = TorchResNet18(input_shape=(16, 16, 3), weights=path)
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((2, 16, 16, 3)), np.array([3, 7])

    net.eval()
    with torch.no_grad():
        errors = {"logits (inference)": rel_error(model.forward(x, training=False),
                                                  net(torch.from_numpy(nchw(x))))}
    running_var = {k: b.clone() for k, b in net.named_buffers() if k.endswith("running_var")}
    errors.update(training_step_errors(net, model, x, labels))
    errors.update(moving_statistic_errors(net, model, running_var, batch=2))
    report(errors)


def moving_statistic_errors(net, model, var_before, batch):
    """moving_mean against running_mean; moving_variance against running_var with
    PyTorch's unbiased factor m/(m-1) taken out of what the step blended in
    (m = N*H*W, the values per channel): v_keras = 0.9 v0 + (v_torch - 0.9 v0) (m-1)/m."""
    errors = {}
    for key, buffer in net.named_buffers():
        if key.endswith("num_batches_tracked"):
            continue
        layer, name, _ = minires_slot(model, key)
        expected = buffer.numpy()
        if name == "moving_variance":
            _, h, w, _ = layer.output.shape
            m = batch * h * w
            v0 = var_before[key].numpy()
            expected = 0.9 * v0 + (expected - 0.9 * v0) * (m - 1) / m
        errors[key] = rel_error(layer.params[name], expected)
    return errors


def report(errors):
    """Fail naming every figure above TOL; print the worst of each kind (pytest -rP shows it)."""
    kinds = {"logits (inference)": [], "logits (training)": [], "loss": [], "dL/dx": [],
             "parameter gradients": [], "moving_mean": [], "moving_variance": []}
    for what, error in errors.items():
        kind = ("parameter gradients" if what.startswith("d/d ") else "moving_mean"
                if what.endswith("running_mean") else "moving_variance"
                if what.endswith("running_var") else what)
        kinds[kind].append((error, what))
    for kind, figures in kinds.items():
        if figures:
            worst, what = max(figures)
            print(f"worst relative error, {kind:<22} {worst:.2e}  ({what}, of {len(figures)})")
    bad = {what: f"{error:.2e}" for what, error in errors.items() if not error <= TOL}
    assert not bad, f"above {TOL:.0e}: {bad}"


@needs_torch
@pytest.mark.parametrize("hw", [(12, 12), (15, 9)], ids=["12x12", "15x9"])
def test_small_resnet_agrees_with_pytorch_and_loads_either_file(tmp_path, numpy_kernels, hw):
    """A narrow ResNet (width 4), odd sizes too, from .npz and from .safetensors.
    Both sizes leave layer4 2x2, so its BNs see m = 8 values per channel (at
    m = 2, a training-mode BN passes back almost no gradient: xhat is +-1)."""
    net = random_torch_resnet(seed=1, blocks=(1, 1, 2, 1), width=4, classes=5)
    pack_safetensors(tmp_path / "w.safetensors", net.state_dict())
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in net.state_dict().items()})
    with floatx_scope("float64"):
        models = [TorchResNet(blocks=(1, 1, 2, 1), width=4, input_shape=(*hw, 3), classes=5,
                              weights=tmp_path / f"w.{suffix}") for suffix in ("npz", "safetensors")]
    assert_same_weights(snapshot(models[0]), snapshot(models[1]))
    x = np.random.default_rng(2).standard_normal((2, *hw, 3))
    net.eval()
    with torch.no_grad():
        errors = {"logits (inference)": rel_error(models[0].forward(x), net(torch.from_numpy(nchw(x))))}
    running_var = {k: b.clone() for k, b in net.named_buffers() if k.endswith("running_var")}
    errors.update(training_step_errors(net, models[0], x, np.array([0, 4])))
    errors.update(moving_statistic_errors(net, models[0], running_var, batch=2))
    report(errors)


@needs_torch
def test_pytorch_takes_minires_export(numpy_kernels):
    """torch_state_dict -> load_state_dict(strict=True): the same logits in inference mode."""
    model = TorchResNet(blocks=(1, 1, 1, 1), width=4, input_shape=(9, 11, 3), classes=5)
    rng = np.random.default_rng(3)
    randomize(model, rng)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5, width=4)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in torch_state_dict(model).items()}, strict=True)
    net.eval()
    x = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(nchw(x))).numpy()
    assert rel_error(model.forward(x), expected) < 1e-5
