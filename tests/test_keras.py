"""Keras 3 models on the PyTorch backend (``cnnlens.models.keras``): models built and saved here as the seeds
built them (a Sequential Conv2D-BN-ReLU-MaxPool-Flatten-Dense-softmax CNN; a functional one with
SeparableConv2D, a residual Add and GlobalAveragePooling2D), as ``.keras`` and legacy ``.h5``, read back,
adapted, imported, and explained.

What the adapter must get right is checked against Keras itself (its own outputs, its sub-models' outputs)
and against PyTorch twins with the same weights; the methods are checked against Captum and torchcam on the
same Keras-on-torch module, in float64 (Keras models built with ``floatx="float64"``), like with like.
Keras's BatchNormalization and averages compute in float32 even in a float64 model (Keras's
``result_type(float64, "float32")`` is float32), so a PyTorch twin agrees with it to ~1e-7, not 1e-15.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_model_untouched
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")  # the keras extra; CI installs it
from keras import layers  # noqa: E402

from cnnlens.explain import core  # noqa: E402
from cnnlens.models import keras as kerasmodels  # noqa: E402
from cnnlens.models.foreign import ForeignModelError, Scored, detect_scores, model_label  # noqa: E402
from cnnlens.models.keras import KerasModel, load_keras  # noqa: E402
from cnnlens.models.summary import format_summary, summary, total_params  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about its ReLU hooks; Keras about h5


# ------------------------------------------------------------------------------------------------ models

@contextlib.contextmanager
def floatx(dtype: str) -> Iterator[None]:
    """Build Keras layers in ``dtype`` (their dtype policy is saved with them). Both the float type and the
    global dtype policy are set: loading a legacy .h5 file sets the policy, which then outranks floatx."""
    before, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(before)
        keras.config.set_dtype_policy(policy)


def set_weights(model: keras.Model, seed: int) -> keras.Model:
    """Seeded weights of a useful size (numpy's generator; Keras's initialisers would draw from torch's)."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape = tuple(w.shape)
        if w.name == "moving_variance":
            v = rng.uniform(0.5, 2.0, shape)
        elif w.name == "gamma":
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = rng.normal(0.0, 0.5, shape)
        values.append(v.astype(str(w.dtype)))
    model.set_weights(values)
    return model


def sequential_cnn(channels: int = 1, size: int = 16, classes: int = 3, *, seed: int = 0,
                   dtype: str = "float64", dropout: float = 0.0) -> keras.Model:
    """The seeds' Keras CNN: Conv2D - BatchNormalization - ReLU - MaxPooling2D - Flatten - Dense(softmax)."""
    with floatx(dtype):
        body = [layers.Conv2D(4, 3, padding="same", name="conv"), layers.BatchNormalization(name="bn"),
                layers.ReLU(name="relu"), layers.MaxPooling2D(name="pool")]
        body += [layers.Dropout(dropout, name="dropout")] if dropout else []
        model = keras.Sequential([keras.Input((size, size, channels)), *body, layers.Flatten(name="flatten"),
                                  layers.Dense(classes, activation="softmax", name="dense")], name="seed_cnn")
    return set_weights(model, seed)


def functional_cnn(channels: int = 3, size: int = 16, classes: int = 4, *, seed: int = 1, dtype: str = "float64",
                   activation: str | None = None) -> keras.Model:
    """conv-BN-ReLU, SeparableConv2D-BN-ReLU, a residual Add of the two, GlobalAveragePooling2D, Dense."""
    with floatx(dtype):
        image = keras.Input((size, size, channels), name="image")
        a = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(layers.Conv2D(6, 3, padding="same", name="conv")(image)))
        b = layers.SeparableConv2D(6, 3, padding="same", name="sep")(a)
        b = layers.ReLU(name="sep_relu")(layers.BatchNormalization(name="sep_bn")(b))
        pooled = layers.GlobalAveragePooling2D(name="gap")(layers.Add(name="add")([a, b]))
        model = keras.Model(image, layers.Dense(classes, activation=activation, name="dense")(pooled), name="residual")
    return set_weights(model, seed)


def saved(model: keras.Model, path: Path) -> Path:
    model.save(str(path))
    return path


def images(n: int, channels: int, size: int = 16, *, seed: int = 7, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def keras_output(model: keras.Model, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """What Keras itself computes (``training=False``) for ``[N,C,H,W]`` images: the model's output, or a layer's
    output from a Keras sub-model, as ``[N,C,h,w]``."""
    net = model if layer is None else keras.Model(model.inputs, model.get_layer(layer).output)
    out = torch.as_tensor(keras.ops.convert_to_numpy(net(x.permute(0, 2, 3, 1), training=False)))
    return out.permute(0, 3, 1, 2) if out.dim() == 4 else out


def _tensor(value: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(np.ascontiguousarray(value)))


def _conv(keras_layer: keras.layers.Layer, **kwargs: object) -> nn.Conv2d:
    kernel, bias = keras_layer.get_weights()
    conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], **kwargs).double()
    conv.weight, conv.bias = _tensor(kernel.transpose(3, 2, 0, 1)), _tensor(bias)
    return conv


def _bn(keras_layer: keras.layers.Layer) -> nn.BatchNorm2d:
    gamma, beta, mean, var = keras_layer.get_weights()
    bn = nn.BatchNorm2d(len(gamma), eps=keras_layer.epsilon).double().eval()
    bn.weight, bn.bias = _tensor(gamma), _tensor(beta)
    bn.running_mean.copy_(torch.as_tensor(mean)), bn.running_var.copy_(torch.as_tensor(var))
    return bn


def _dense(keras_layer: keras.layers.Layer) -> nn.Linear:
    kernel, bias = keras_layer.get_weights()
    linear = nn.Linear(*kernel.shape).double()
    linear.weight, linear.bias = _tensor(kernel.T), _tensor(bias)
    return linear


class FlattenNHWC(nn.Module):
    """Keras's Flatten of a channels-last map: ``[N,C,h,w]`` flattened in ``h, w, C`` order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class SequentialTwin(nn.Module):
    """:func:`sequential_cnn` written in PyTorch with its weights, its modules named as the Keras layers."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.conv = _conv(model.get_layer("conv"), padding=1)
        self.bn, self.relu, self.pool = _bn(model.get_layer("bn")), nn.ReLU(), nn.MaxPool2d(2)
        self.flatten, self.dense = FlattenNHWC(), _dense(model.get_layer("dense"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.flatten(self.pool(self.relu(self.bn(self.conv(x)))))).softmax(1)


class Sum(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class FunctionalTwin(nn.Module):
    """:func:`functional_cnn` (no output activation) in PyTorch, modules named and registered as Keras's layers."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = _conv(model.get_layer("conv"), padding=1), _bn(model.get_layer("bn")), nn.ReLU()
        depthwise, pointwise, bias = model.get_layer("sep").get_weights()
        self.sep = nn.Sequential(nn.Conv2d(depthwise.shape[2], depthwise.shape[2], 3, padding=1, groups=depthwise.shape[2],
                                           bias=False), nn.Conv2d(pointwise.shape[2], pointwise.shape[3], 1)).double()
        self.sep[0].weight = _tensor(depthwise.transpose(2, 3, 0, 1))
        self.sep[1].weight, self.sep[1].bias = _tensor(pointwise.transpose(3, 2, 0, 1)), _tensor(bias)
        self.sep_bn, self.sep_relu = _bn(model.get_layer("sep_bn")), nn.ReLU()
        self.add, self.gap, self.dense = Sum(), Mean(), _dense(model.get_layer("dense"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn(self.conv(x)))
        return self.dense(self.gap(self.add(a, self.sep_relu(self.sep_bn(self.sep(a))))))


# ---------------------------------------------------------------------------------------- the adapter

@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("build", [sequential_cnn, functional_cnn], ids=["sequential", "functional"])
def test_a_saved_model_reads_back_and_computes_what_keras_computes_on_nchw_images(tmp_path, build, suffix):
    original = build(dtype="float32")
    net = KerasModel(load_keras(saved(original, tmp_path / f"m{suffix}")))
    c = net.input_shape[0]
    assert net.input_shape == (c, 16, 16) and net.channels_last
    x = images(3, c, dtype=torch.float32)
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(out, keras_output(original, x), rtol=0, atol=0)  # the same Keras ops
    # the layers, by their Keras names, in graph order, each variable once
    names = [layer.name for layer in original.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert [n for n, _ in net.named_modules()][1:] == names
    assert total_params(net) == original.count_params() == sum(p.numel() for p in net.parameters())
    assert {id(p) for p in net.parameters()} == {id(w.value) for w in net.keras_model.weights}  # Keras's own tensors
    assert set(net.state_dict()) == {f"{layer.name}.{w.name}" for layer in original.layers for w in layer.weights}


def test_views_present_nchw_to_hooks_and_a_hook_that_returns_a_tensor_replaces_the_layers_output():
    model = functional_cnn()
    net = KerasModel(model)
    x = images(2, 3)
    seen: dict[str, tuple] = {}
    with core.hooks() as handles:
        for name in ("conv", "sep", "add", "gap"):
            handles.append(net.get_submodule(name).register_forward_hook(
                lambda m, args, out, name=name: seen.__setitem__(name, (args, out))))
        net(x)
    torch.testing.assert_close(seen["conv"][0][0], x, rtol=0, atol=0)  # the image as cnnlens gave it
    for name in ("conv", "sep", "add"):
        assert seen[name][1].shape == (2, 6, 16, 16)
        torch.testing.assert_close(seen[name][1], keras_output(model, x, name), rtol=1e-12, atol=1e-12)
    assert isinstance(seen["add"][0][0], list) and seen["add"][0][0][0].shape == (2, 6, 16, 16)  # Add's list input
    # zero the residual sum: the output is then the Dense's bias, as Keras would compute it
    with core.hooks() as handles:
        handles.append(net.add.register_forward_hook(lambda m, args, out: torch.zeros_like(out)))
        out = net(x)
    torch.testing.assert_close(out, torch.as_tensor(model.get_layer("dense").get_weights()[1]).expand(2, -1))
    assert_model_untouched(net, [True] * len(list(net.modules())))  # a new module: train mode


def gradient_at(model: nn.Module, module: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """d output[:, target] / d (the hooked module's output)."""
    kept: list[torch.Tensor] = []
    with core.hooks() as handles:
        handles.append(module.register_forward_hook(lambda m, args, out: kept.append(out)))
        out = model(x)
    return torch.autograd.grad(out[:, target].sum(), kept[0])[0]


def test_gradients_of_a_hooked_layer_output_are_those_of_the_model():
    model = functional_cnn()
    net, twin = KerasModel(model), FunctionalTwin(model)
    x = images(2, 3)
    # d dense_1 / d add = w[:, 1] / (h w) everywhere: GAP + Dense (Keras averages in float32)
    w = torch.as_tensor(model.get_layer("dense").get_weights()[0][:, 1]) / 256
    torch.testing.assert_close(gradient_at(net, net.add, x, 1), w.view(1, -1, 1, 1).expand(2, -1, 16, 16),
                               rtol=1e-6, atol=0)
    for name in ("conv", "relu", "sep", "sep_relu"):  # BN: float32 in Keras
        theirs = gradient_at(twin, twin.get_submodule(name), x, 2)
        torch.testing.assert_close(gradient_at(net, net.get_submodule(name), x, 2), theirs, rtol=0,
                                   atol=1e-5 * float(theirs.abs().max()))


def test_keras_layers_are_torch_layers_where_cnnlens_looks_for_them():
    model = functional_cnn()
    net = KerasModel(model)
    assert isinstance(net.conv, nn.Conv2d) and isinstance(net.dense, nn.Linear) and isinstance(net.bn, nn.BatchNorm2d)
    assert isinstance(net.relu, nn.ReLU) and not isinstance(net.sep, nn.Conv2d)
    kernel, _ = model.get_layer("conv").get_weights()
    np.testing.assert_array_equal(net.conv.weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(net.dense.weight.detach().numpy(), model.get_layer("dense").get_weights()[0].T)
    assert (net.conv.in_channels, net.conv.out_channels, net.conv.kernel_size) == (3, 6, (3, 3))
    assert (net.dense.in_features, net.dense.out_features) == (6, 4)
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    for ours, theirs in ((net.bn.weight, gamma), (net.bn.bias, beta), (net.bn.running_mean, mean), (net.bn.running_var, var)):
        np.testing.assert_array_equal(ours.detach().numpy(), theirs)
    # the same tensors as Keras's variables: writing through one is seen by the other
    with torch.no_grad():
        net.bn.reset_parameters()
    np.testing.assert_array_equal(model.get_layer("bn").get_weights()[3], np.ones(6))
    # layer lookup: Scored's prefix, and a clear error listing the Keras names
    scored = Scored(net)
    assert core.get_layer(scored, "sep_bn") is net.sep_bn
    with pytest.raises(ValueError, match="unknown layer 'conv2d_7'; valid layer names: conv, bn, relu, sep"):
        core.get_layer(scored, "conv2d_7")
    assert core.last_conv_layer(scored) == "model.conv"
    with core.guarded(scored):
        assert core.default_cam_layer(scored, images(1, 3)) == "model.add"  # the map GAP pools


def test_layers_run_with_training_false_whatever_the_torch_mode():
    model = sequential_cnn(dropout=0.5)
    net = KerasModel(model).train()
    x = images(4, 1)
    before = [w.copy() for w in model.get_weights()]
    with torch.no_grad():
        a, b = net(x), net(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # Dropout off
    torch.testing.assert_close(a, keras_output(model, x), rtol=0, atol=0)  # BN on its moving statistics
    for w, v in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, v)  # moving statistics not updated
    assert all(m.training for m in net.modules())  # the torch mode itself is the caller's


def test_summary_lists_the_keras_layers_with_their_keras_types():
    model = sequential_cnn()
    rows = summary(Scored(KerasModel(model)), (1, 16, 16))
    assert [(r.name, r.type) for r in rows] == [("conv", "Conv2D"), ("bn", "BatchNormalization"), ("relu", "ReLU"),
                                                ("pool", "MaxPooling2D"), ("flatten", "Flatten"), ("dense", "Dense")]
    assert [r.output_shape for r in rows] == [(1, 4, 16, 16)] * 3 + [(1, 4, 8, 8), (1, 256), (1, 3)]
    assert [r.params for r in rows] == [40, 16, 0, 0, 0, 771]
    assert sum(r.trainable_params for r in rows) == 40 + 8 + 771  # moving statistics are not trainable
    assert "Total params: 827" in format_summary(rows)


def test_scores_a_softmax_output_as_its_log_probability_and_a_sigmoid_unit_as_two_classes():
    net = KerasModel(sequential_cnn())
    scores, note = detect_scores(net, (1, 16, 16))
    assert scores == "probabilities" and "its last Keras layer, dense, applies softmax" in note
    x = images(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(Scored(net, scores=scores)(x), net(x).log())
    binary = KerasModel(functional_cnn(classes=1, activation="sigmoid"))
    with torch.no_grad():
        p = keras_output(binary.keras_model, x.expand(-1, 3, -1, -1))
        torch.testing.assert_close(binary(x.expand(-1, 3, -1, -1)), torch.cat([1 - p, p], 1))
    assert detect_scores(binary, (3, 16, 16))[0] == "probabilities"
    assert detect_scores(KerasModel(functional_cnn()), (3, 16, 16)) == ("logits", None)


def test_a_copy_is_independent_and_computes_the_same():
    net = KerasModel(functional_cnn())
    twin = copy.deepcopy(net)
    x = images(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), rtol=0, atol=0)
        twin.conv.kernel.zero_()
    assert not torch.equal(twin(x), net(x)) and net.conv.kernel.abs().sum() > 0
    assert [n for n, _ in twin.named_modules()] == [n for n, _ in net.named_modules()]


def test_model_label_says_keras_model():
    net = KerasModel(sequential_cnn())
    assert model_label(Scored(net)) == "Keras model (seed_cnn)"
    assert model_label(Scored(net), {"keras": "model.keras"}) == "Keras model (seed_cnn)"


# ------------------------------------------------------------------------------------ refusals and errors

def lambda_model() -> keras.Model:
    image = keras.Input((16, 16, 1))
    x = layers.Lambda(lambda t: t * 2.0, name="double")(image)
    return keras.Model(image, layers.Dense(2, activation="softmax")(layers.Flatten()(x)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_lambda_layer_file_is_refused_unless_its_code_is_trusted(tmp_path, suffix):
    path = saved(lambda_model(), tmp_path / f"lam{suffix}")
    with pytest.raises(ForeignModelError, match="holds Python code inside a layer .*Loading it would run that code, so "
                                                "cnnlens refuses; if you trust the file's source, pass --trust-keras-code") as err:
        load_keras(path)
    assert err.value.option == "--trust-keras-code"
    net = KerasModel(load_keras(path, trust_code=True))
    with torch.no_grad():
        assert net(images(1, 1, dtype=torch.float32)).shape == (1, 2)


def test_bad_files_say_what_keras_reads(tmp_path):
    with pytest.raises(ForeignModelError, match="is missing"):
        load_keras(tmp_path / "none.keras")
    (tmp_path / "saved_model").mkdir()
    with pytest.raises(ForeignModelError, match="a TensorFlow SavedModel.*Keras 3 reads .keras and .h5 files"):
        load_keras(tmp_path / "saved_model")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ForeignModelError, match="not a Keras model file: expected .keras, .h5, .hdf5"):
        load_keras(tmp_path / "m.pt")
    (tmp_path / "m.keras").write_bytes(b"not a zip")
    with pytest.raises(ForeignModelError, match="Keras cannot load"):
        load_keras(tmp_path / "m.keras")


def test_models_cnnlens_cannot_explain_are_refused_clearly():
    with pytest.raises(TypeError, match="expected a keras.Model"):
        KerasModel(layers.Dense(3))
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    with pytest.raises(ForeignModelError, match="2 inputs and 1 outputs"):
        KerasModel(keras.Model([a, b], layers.Add()([a, b])))
    vector = keras.Input((10,))
    with pytest.raises(ForeignModelError, match="explains image models"):
        KerasModel(keras.Model(vector, layers.Dense(2)(vector)))


def test_without_keras_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras then raises ImportError
    with pytest.raises(ForeignModelError, match=r"needs Keras 3 .*pip install 'cnnlens\[keras\]'"):
        kerasmodels.require_keras()


def test_keras_on_another_backend_is_refused(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ForeignModelError, match="imported with the 'jax' backend .* KERAS_BACKEND=torch"):
        kerasmodels.require_keras()
    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(ForeignModelError, match="KERAS_BACKEND=tensorflow is set, .* set KERAS_BACKEND=torch"):
        kerasmodels.require_keras()


def test_model_randomization_reinitialises_keras_layers_on_a_copy():
    from cnnlens.explain import saliency
    from cnnlens.faithfulness.randomization import model_randomization

    model = sequential_cnn()
    net = Scored(KerasModel(model), scores="probabilities")
    before = [w.copy() for w in model.get_weights()]
    res = model_randomization(net, images(2, 1), {"saliency": saliency}, mode="independent")
    assert res.layers == ("model.dense", "model.conv+model.bn")  # BatchNormalization joins its convolution
    assert torch.isfinite(res.spearman["saliency"]).all() and (res.spearman["saliency"] < 0.9).all()
    for w, v in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, v)  # the copy was randomised, not the model


@pytest.mark.parametrize("version", ["2.15.0", "3.8.0", "4.0.0"])
def test_keras_versions_whose_safe_mode_cnnlens_does_not_trust_are_refused(monkeypatch, version):
    monkeypatch.setattr(keras, "__version__", version)
    with pytest.raises(ForeignModelError, match=f"Keras 3.12 or later .*found Keras {version}; install it with pip"):
        kerasmodels.require_keras()


def test_layers_without_bias_have_bias_none_as_in_torch():
    image = keras.Input((8, 8, 1))
    x = layers.Conv2D(3, 3, use_bias=False, name="conv")(image)
    net = KerasModel(keras.Model(image, layers.Dense(2, use_bias=False, name="dense")(layers.Flatten()(x))))
    assert net.conv.bias is None and net.dense.bias is None and total_params(net) == 27 + 108 * 2  # 3x3x1x3; 6x6x3 -> 2


def test_a_model_used_as_a_layer_shows_its_own_layers_inside_it(tmp_path):
    block = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(4, 3, padding="same", name="c1"),
                              layers.ReLU(name="r1")], name="block")
    image = keras.Input((16, 16, 3))
    head = layers.Dense(3, name="dense")(layers.GlobalAveragePooling2D(name="gap")(block(image)))
    model = keras.Model(image, head)
    net = KerasModel(load_keras(saved(model, tmp_path / "nested.keras")))
    assert [n for n, _ in net.named_modules()][1:] == ["block", "block.c1", "block.r1", "gap", "dense"]
    assert total_params(net) == model.count_params()
    x = images(2, 3, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), keras_output(model, x), rtol=0, atol=0)
    with core.hooks() as handles:
        seen: list[torch.Tensor] = []
        handles.append(net.block.c1.register_forward_hook(lambda m, args, out: seen.append(out)))
        net(x)
    torch.testing.assert_close(seen[0], keras_output(block, x, "c1"), rtol=0, atol=0)
    scored = Scored(net)
    with core.guarded(scored, x):
        assert core.default_cam_layer(scored, x) == "model.block"  # the block's output is what GAP pools
    assert core.get_layer(scored, "block.r1") is net.block.r1
