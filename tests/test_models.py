"""Model zoo against closed forms, numpy re-computations and (optionally) PyTorch.

Parameter counts are the reference's; padding, normalisation and initialiser checks are
recomputed in numpy; the optional torch tests rebuild the reference networks in PyTorch,
copy the weights over and compare logits.
"""

import math
import re

import keras
import numpy as np
import pytest

from dac_tf import models
from dac_tf.models import layers

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], "float32")
CIFAR_STD = np.array([0.2471, 0.2435, 0.2616], "float32")


def _trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def _layers_of(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


@pytest.fixture(scope="module")
def prn18():
    keras.utils.set_random_seed(0)
    return models.build("preact_resnet18", num_classes=10)


@pytest.fixture(scope="module")
def wrn34():
    keras.utils.set_random_seed(0)
    return models.build("wide_resnet34_10", num_classes=10)


# ------------------------------------------------------------------ parameter counts


def test_preact_resnet18_param_counts(prn18):
    assert _trainable_count(prn18) == 11_172_170
    assert _trainable_count(models.build("preact_resnet18", num_classes=100)) == 11_218_340


def test_wide_resnet34_10_param_count(wrn34):
    assert _trainable_count(wrn34) == 46_160_474


def _wrn_closed_form(depth, k, num_classes, in_channels=3):
    """Trainable parameters of the TRADES WideResNet (without its unused sub_block1)."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = 9 * in_channels * 16
    for group in range(1, 4):
        c = widths[group]
        for i in range(n):
            c_in = widths[group - 1] if i == 0 else c
            total += 2 * c_in + 9 * c_in * c + 2 * c + 9 * c * c
            total += c_in * c if c_in != c else 0
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


@pytest.mark.parametrize("depth,k,classes", [(10, 1, 10), (16, 2, 7), (28, 1, 100)])
def test_wide_resnet_param_count_matches_closed_form(depth, k, classes):
    assert _wrn_closed_form(34, 10, 10) == 46_160_474  # the formula itself is right
    model = models.build("wide_resnet", num_classes=classes, depth=depth, widen_factor=k)
    assert _trainable_count(model) == _wrn_closed_form(depth, k, classes)
    assert model.name == f"wide_resnet{depth}_{k}"


def _source(model, layer_name, index=None):
    """Name of the layer whose output feeds `layer_name` (input `index` for Add)."""
    tensor = model.get_layer(layer_name).input
    tensor = tensor if index is None else tensor[index]
    return tensor._keras_history.operation.name


def test_block_wiring_of_reference_code(prn18, wrn34):
    # PreActBlock: the projection shortcut takes relu(bn1(x)); an identity one takes x.
    assert _source(prn18, "layer2_block0_shortcut") == "layer2_block0_relu1"
    assert _source(prn18, "layer2_block0_conv1_pad") == "layer2_block0_relu1"
    assert _source(prn18, "layer2_block1_add", 1) == "layer2_block0_add"
    assert _source(prn18, "layer1_block0_add", 1) == "conv1"
    # TRADES BasicBlock: without equalInOut, x itself is overwritten by relu(bn1(x)).
    assert _source(wrn34, "block1_layer0_conv_shortcut") == "block1_layer0_relu1"
    assert _source(wrn34, "block2_layer0_conv_shortcut") == "block2_layer0_relu1"
    assert _source(wrn34, "block2_layer1_add", 0) == "block2_layer0_add"
    assert _source(wrn34, "block2_layer1_conv1") == "block2_layer1_relu1"
    assert _source(wrn34, "block2_layer1_bn1") == "block2_layer0_add"


def test_wide_resnet34_10_name_and_dropout_option(wrn34):
    assert wrn34.name == "wide_resnet34_10"
    assert not _layers_of(wrn34, keras.layers.Dropout)
    model = models.build("wide_resnet", depth=10, widen_factor=1, dropout=0.3)
    dropouts = _layers_of(model, keras.layers.Dropout)
    assert len(dropouts) == 3 and all(d.rate == 0.3 for d in dropouts)


# ------------------------------------------------------------------ padding


def _torch_style_conv(x, kernel, stride, pad):
    """Cross-correlation with `pad` zeros on every side (PyTorch Conv2d), NHWC/HWIO."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, _, cout = kernel.shape
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, cout), "float64")
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("size", [8, 9])
def test_stride2_conv3x3_is_pytorch_padding_1(size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    inputs = keras.Input((size, size, 3))
    out = layers.conv3x3(inputs, 4, 2, layers.torch_default_conv_init(), "c")
    model = keras.Model(inputs, out)
    kernel = model.get_layer("c").kernel.numpy()
    expected = _torch_style_conv(x.astype("float64"), kernel, stride=2, pad=1)
    ours = model(x).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)

    # Keras "same" is a different function on even sizes (pads bottom/right only).
    same = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)
    same.build(x.shape)
    same.kernel.assign(kernel)
    if size % 2 == 0:
        assert np.max(np.abs(same(x).numpy() - expected)) > 1e-2


@pytest.mark.parametrize("fixture", ["prn18", "wrn34"])
def test_every_stride2_3x3_conv_is_explicitly_padded(fixture, request):
    model = request.getfixturevalue(fixture)
    strided = [c for c in _layers_of(model, keras.layers.Conv2D) if c.strides == (2, 2)]
    conv3 = [c for c in strided if c.kernel_size == (3, 3)]
    conv1 = [c for c in strided if c.kernel_size == (1, 1)]
    assert len(conv3) == (3 if fixture == "prn18" else 2) and len(conv1) == len(conv3)
    for conv in strided:
        assert conv.padding == "valid"
    for conv in conv3:
        pad = model.get_layer(conv.name + "_pad")
        assert isinstance(pad, keras.layers.ZeroPadding2D)
        assert tuple(map(tuple, pad.padding)) == ((1, 1), (1, 1))
        assert pad.output is conv.input


def test_feature_map_size_follows_pytorch_formula_on_odd_inputs():
    # PyTorch: out = floor((H + 2 - 3) / 2) + 1 for each stride-2 stage.
    model = models.build("preact_resnet18", input_shape=(33, 33, 3))
    size = 33
    for _ in range(3):
        size = (size + 2 - 3) // 2 + 1
    assert model.get_layer("bn").output.shape[1:3] == (size, size)


# ------------------------------------------------------------------ normalisation


def test_channel_normalization_matches_numpy_and_round_trips():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(3, 5, 5, 3)).astype("float32")
    layer = layers.ChannelNormalization(CIFAR_MEAN, CIFAR_STD)
    np.testing.assert_allclose(layer(x).numpy(), (x - CIFAR_MEAN) / CIFAR_STD, rtol=1e-6)

    config = layer.get_config()
    clone = layers.ChannelNormalization.from_config(config)
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy())
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, layers.ChannelNormalization)
    assert restored.mean == pytest.approx(list(CIFAR_MEAN), abs=1e-7)
    assert restored.std == pytest.approx(list(CIFAR_STD), abs=1e-7)


def test_channel_normalization_any_channel_count_and_validation():
    x = np.full((1, 2, 2, 1), 0.75, "float32")
    np.testing.assert_allclose(layers.ChannelNormalization([0.5], [0.25])(x), 1.0)
    with pytest.raises(ValueError, match="2 mean/std values but the input has 3"):
        layers.ChannelNormalization([0.5, 0.5], [0.2, 0.2])(np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="mean has 2 values but std has 3"):
        layers.ChannelNormalization([0.5, 0.5], [0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="positive"):
        layers.ChannelNormalization([0.5], [0.0])


def test_normalization_inside_model_is_applied_to_inputs():
    keras.utils.set_random_seed(2)
    plain = models.build("small_cnn", normalization=None)
    normed = models.build("small_cnn", normalization="cifar10")
    assert not _layers_of(plain, keras.layers.Normalization)
    assert not _layers_of(models.build("small_cnn"), keras.layers.Normalization)  # auto
    assert len(_layers_of(normed, keras.layers.Normalization)) == 1
    normed.set_weights(plain.get_weights())
    x = np.random.default_rng(3).uniform(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(normed(x).numpy(),
                               plain((x - CIFAR_MEAN) / CIFAR_STD).numpy(), atol=1e-5)
    assert np.max(np.abs(normed(x).numpy() - plain(x).numpy())) > 1e-3


def test_custom_normalization_pair_and_saved_model_round_trip(tmp_path):
    model = models.build("small_cnn", input_shape=(8, 8, 1), normalization=([0.3], [0.2]))
    norm = model.get_layer("normalization")
    assert isinstance(norm, keras.layers.Normalization)
    assert norm.get_config()["mean"] == [0.3]
    assert norm.get_config()["variance"] == [float(np.float32(0.2) * np.float32(0.2))]
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(4).uniform(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert isinstance(loaded.get_layer("normalization"), keras.layers.Normalization)


@pytest.mark.parametrize("stats", [(CIFAR_MEAN, CIFAR_STD), "random"])
def test_zoo_normalization_is_bit_for_bit_x_minus_mean_over_std(stats):
    # The reference normalises with (x - mean) / std; Keras' Normalization divides by
    # sqrt(variance), which must give the float32 std back exactly.
    rng = np.random.default_rng(5)
    if stats == "random":
        stats = (rng.uniform(0, 1, 64).astype("float32"),
                 rng.uniform(1e-3, 3, 64).astype("float32"))
    mean, std = stats
    x = rng.uniform(size=(4, 3, 3, len(mean))).astype("float32")
    layer = layers.normalization_layer(mean.tolist(), std.tolist())
    assert isinstance(layer, keras.layers.Normalization)
    np.testing.assert_array_equal(layer(x).numpy(), (x - mean) / std)
    np.testing.assert_array_equal(layer(x).numpy(),
                                  layers.ChannelNormalization(mean, std)(x).numpy())


@pytest.mark.slow
def test_a_saved_zoo_model_loads_with_keras_alone(tmp_path):
    # A user's serving or analysis code should not need dac_tf to read a .keras file
    # of a zoo model (before: "Could not locate class 'ChannelNormalization'").
    import subprocess
    import sys
    model = models.build("small_cnn", input_shape=(8, 8, 3), normalization="cifar10")
    x = np.random.default_rng(6).uniform(size=(2, 8, 8, 3)).astype("float32")
    model.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "logits.npy", model(x).numpy())
    code = f"""
import sys
class NoDacTf:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "dac_tf":
            raise ImportError("dac_tf must not be needed")
sys.meta_path.insert(0, NoDacTf())
import keras, numpy as np
loaded = keras.saving.load_model({str(tmp_path / "m.keras")!r})
same = np.array_equal(loaded(np.load({str(tmp_path / "x.npy")!r})).numpy(),
                      np.load({str(tmp_path / "logits.npy")!r}))
print("equal" if same else "different")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "equal"


def test_model_with_normalization_exports_as_saved_model(tmp_path):
    import tensorflow as tf
    model = models.build("small_cnn", input_shape=(8, 8, 1), normalization=([0.3], [0.2]))
    model.export(str(tmp_path / "sm"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "sm"))
    x = np.random.default_rng(9).uniform(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(served.serve(x).numpy(), model(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("bad", ["imagenet", ([0.5], [0.2], [0.1]), (["a"], [1.0])])
def test_bad_normalization_values(bad):
    with pytest.raises(ValueError, match="normalization"):
        models.build("small_cnn", normalization=bad)


def test_cifar10_normalization_on_one_channel_input_fails():
    with pytest.raises(ValueError, match="3 mean/std values but the input has 1"):
        models.build("small_cnn", input_shape=(8, 8, 1), normalization="cifar10")


# ------------------------------------------------------------------ BN and init


@pytest.mark.parametrize("fixture,count", [("prn18", 17), ("wrn34", 31)])
def test_batch_norm_matches_pytorch_defaults(fixture, count, request):
    model = request.getfixturevalue(fixture)
    bns = _layers_of(model, keras.layers.BatchNormalization)
    assert len(bns) == count
    for bn in bns:
        assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)
        np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)
        np.testing.assert_array_equal(bn.beta.numpy(), 0.0)


def test_preact_resnet18_init_is_pytorch_default(prn18):
    convs = _layers_of(prn18, keras.layers.Conv2D)
    assert len(convs) == 1 + 16 + 3
    for conv in convs:
        kernel = conv.kernel.numpy()
        assert conv.bias is None
        kh, kw, cin, _ = kernel.shape
        bound = 1.0 / math.sqrt(kh * kw * cin)
        assert np.max(np.abs(kernel)) <= bound
        assert np.max(np.abs(kernel)) > 0.95 * bound  # uniform fills the interval
        if kernel.size > 10_000:  # U(-b, b) has std b / sqrt(3)
            assert np.std(kernel) == pytest.approx(bound / math.sqrt(3), rel=0.03)
    head = prn18.get_layer("logits")
    bound = 1.0 / math.sqrt(512)
    for w in (head.kernel.numpy(), head.bias.numpy()):
        assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.5 * bound


def test_wide_resnet_init_is_kaiming_normal_fan_out(wrn34):
    convs = _layers_of(wrn34, keras.layers.Conv2D)
    assert len(convs) == 1 + 2 * 15 + 3
    for conv in convs:
        kernel = conv.kernel.numpy()
        kh, kw, _, cout = kernel.shape
        std = math.sqrt(2.0 / (kh * kw * cout))
        assert conv.bias is None
        assert np.std(kernel) == pytest.approx(std, rel=0.1 if kernel.size < 5000 else 0.02)
        assert abs(np.mean(kernel)) < 0.1 * std
    big = wrn34.get_layer("block3_layer1_conv2").kernel.numpy()
    std = math.sqrt(2.0 / (9 * 640))
    # Untruncated normal (PyTorch), unlike Keras' truncated he_normal: ~0.3% beyond 3 std.
    assert np.mean(np.abs(big) > 3 * std) == pytest.approx(0.0027, rel=0.1)
    head = wrn34.get_layer("logits")
    np.testing.assert_array_equal(head.bias.numpy(), 0.0)
    assert np.max(np.abs(head.kernel.numpy())) <= 1.0 / math.sqrt(640)


# ------------------------------------------------------------------ outputs


def test_logits_are_float32_under_mixed_bfloat16():
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        for name, kwargs in [("small_cnn", {}), ("wide_resnet", dict(depth=10, widen_factor=1)),
                             ("preact_resnet18", {})]:
            model = models.build(name, input_shape=(16, 16, 3), normalization="cifar10",
                                 **kwargs)
            out = model(np.random.default_rng(5).uniform(size=(2, 16, 16, 3)))
            assert out.dtype == "float32", name
            assert model.get_layer("conv1").compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_head_is_linear_no_softmax(prn18):
    head = prn18.get_layer("logits")
    assert head.activation is keras.activations.linear
    assert prn18.layers[-1] is head
    out = prn18(np.random.default_rng(6).uniform(size=(2, 32, 32, 3)), training=False)
    assert not np.allclose(np.sum(out.numpy(), axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3)])
def test_small_cnn_shapes_and_size(shape):
    model = models.build("small_cnn", num_classes=7, input_shape=shape)
    assert model.name == "small_cnn"
    assert _trainable_count(model) < 100_000
    out = model(np.zeros((3,) + shape, "float32"))
    assert tuple(out.shape) == (3, 7)


@pytest.mark.slow
def test_small_cnn_learns_digits():
    from sklearn.datasets import load_digits
    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    model = models.build("small_cnn", input_shape=(8, 8, 1))
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:1500], y[:1500], batch_size=64, epochs=8, verbose=0)
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    assert accuracy > 0.9


# ------------------------------------------------------------------ errors


def test_unknown_name_lists_valid_names():
    assert set(models.ARCHITECTURES) == {"preact_resnet18", "wide_resnet34_10",
                                         "wide_resnet", "small_cnn"}
    with pytest.raises(ValueError, match="preact_resnet18, wide_resnet34_10, wide_resnet"):
        models.build("resnet50")


@pytest.mark.parametrize("depth", [33, 4, 28.0])
def test_bad_wide_resnet_depth(depth):
    with pytest.raises(ValueError, match=r"\(depth - 4\) % 6"):
        models.build("wide_resnet", depth=depth)


def test_small_cnn_rejects_tiny_inputs():
    with pytest.raises(ValueError, match="8x8"):
        models.build("small_cnn", input_shape=(7, 8, 1))


# ------------------------------------------------------------------ PyTorch reference


def _copy_torch_weights(torch_model, keras_model, keras_name):
    """Copies conv/BN/linear weights from torch into the Keras model, by name."""
    import torch
    copied = 0
    for path, module in torch_model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
            keras_model.get_layer(keras_name(path)).kernel.assign(kernel)
        elif isinstance(module, torch.nn.BatchNorm2d):
            bn = keras_model.get_layer(keras_name(path))
            bn.gamma.assign(module.weight.detach().numpy())
            bn.beta.assign(module.bias.detach().numpy())
            bn.moving_mean.assign(module.running_mean.numpy())
            bn.moving_variance.assign(module.running_var.numpy())
        elif isinstance(module, torch.nn.Linear):
            head = keras_model.get_layer(keras_name(path))
            head.kernel.assign(module.weight.detach().numpy().T)
            head.bias.assign(module.bias.detach().numpy())
        else:
            continue
        copied += 1
    return copied


def _randomise_bn(torch_model, seed):
    """Non-trivial BN parameters and running stats, so eval mode is a real check."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def _compare_with_torch(torch_model, keras_model, keras_name, inputs, normalize):
    import torch
    n_weighted = len([m for m in torch_model.modules()
                      if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d,
                                        torch.nn.Linear))])
    assert _copy_torch_weights(torch_model, keras_model, keras_name) == n_weighted
    assert _trainable_count(keras_model) == sum(p.numel() for p in torch_model.parameters())
    x_torch = torch.from_numpy(normalize(inputs).transpose(0, 3, 1, 2).copy())
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    np.testing.assert_allclose(keras_model(inputs, training=False).numpy(), expected,
                               atol=1e-4, rtol=1e-4)
    torch_model.train()
    with torch.no_grad():
        expected_train = torch_model(x_torch).numpy()
    np.testing.assert_allclose(keras_model(inputs, training=True).numpy(), expected_train,
                               atol=1e-4, rtol=1e-4)
    assert np.max(np.abs(expected - expected_train)) > 1e-3  # the two modes do differ
    # Moving mean update: same momentum convention after one train-mode batch.
    for path, module in torch_model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            np.testing.assert_allclose(
                keras_model.get_layer(keras_name(path)).moving_mean.numpy(),
                module.running_mean.numpy(), atol=1e-5)


def _torch_preact_resnet18(num_classes):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class PreActBlock(nn.Module):
        def __init__(self, in_planes, planes, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

        def forward(self, x):
            out = F.relu(self.bn1(x))
            shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
            out = self.conv1(out)
            out = self.conv2(F.relu(self.bn2(out)))
            return out + shortcut

    class PreActResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            in_planes, stages = 64, []
            for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride),
                                            PreActBlock(planes, planes, 1)))
                in_planes = planes
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.bn = nn.BatchNorm2d(512)
            self.linear = nn.Linear(512, num_classes)

        def forward(self, x):
            out = self.conv1(x)
            out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
            out = F.relu(self.bn(out))
            out = F.avg_pool2d(out, 4)
            return self.linear(torch.flatten(out, 1))

    return PreActResNet18()


def _torch_wide_resnet(depth, k, num_classes):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class BasicBlock(nn.Module):
        def __init__(self, in_planes, out_planes, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_planes)
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
            self.equal = in_planes == out_planes
            if not self.equal:
                self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

        def forward(self, x):
            if not self.equal:
                x = F.relu(self.bn1(x))
                out = x
            else:
                out = F.relu(self.bn1(x))
            out = self.conv2(F.relu(self.bn2(self.conv1(out))))
            return (x if self.equal else self.convShortcut(x)) + out

    class WideResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 4) // 6
            widths = [16, 16 * k, 32 * k, 64 * k]
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            groups = []
            for g, stride in enumerate((1, 2, 2), start=1):
                groups.append(nn.Sequential(*[
                    BasicBlock(widths[g - 1] if i == 0 else widths[g], widths[g],
                               stride if i == 0 else 1) for i in range(n)]))
            self.block1, self.block2, self.block3 = groups
            self.bn1 = nn.BatchNorm2d(widths[3])
            self.fc = nn.Linear(widths[3], num_classes)

        def forward(self, x):
            out = self.block3(self.block2(self.block1(self.conv1(x))))
            out = F.relu(self.bn1(out))
            out = F.avg_pool2d(out, 8)
            return self.fc(torch.flatten(out, 1))

    return WideResNet()


def test_preact_resnet18_matches_pytorch_reference():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = _torch_preact_resnet18(10)
    _randomise_bn(reference, 1)
    model = models.build("preact_resnet18", normalization="cifar10")

    def keras_name(path):
        path = re.sub(r"^layer(\d)\.(\d)\.", r"layer\1_block\2_", path)
        return "logits" if path == "linear" else path

    inputs = np.random.default_rng(7).uniform(size=(4, 32, 32, 3)).astype("float32")
    _compare_with_torch(reference, model, keras_name, inputs,
                        lambda x: (x - CIFAR_MEAN) / CIFAR_STD)


def test_wide_resnet_matches_pytorch_reference():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = _torch_wide_resnet(16, 2, 10)  # 2 blocks a group: both paths
    _randomise_bn(reference, 2)
    model = models.build("wide_resnet", depth=16, widen_factor=2, normalization=None)

    def keras_name(path):
        path = re.sub(r"^block(\d)\.(\d+)\.", r"block\1_layer\2_", path)
        path = path.replace("convShortcut", "conv_shortcut")
        return {"bn1": "bn", "fc": "logits"}.get(path, path)

    inputs = np.random.default_rng(8).uniform(size=(4, 32, 32, 3)).astype("float32")
    _compare_with_torch(reference, model, keras_name, inputs, lambda x: x)
