"""summary(): rows from real hooks, parameter counts worked out by hand, nothing left behind."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cnnlens.cli import main
from cnnlens.models import LayerRow, build, format_summary, summary, total_params


def tiny() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 2, 3, padding=1),   # 1*2*3*3 weights + 2 biases = 20
        relu=nn.ReLU(),
        pool=nn.MaxPool2d(2),
        flat=nn.Flatten(),
        fc=nn.Linear(2 * 4 * 4, 3),           # 32*3 weights + 3 biases = 99
    ))


def assert_no_hooks(model: nn.Module) -> None:
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def test_tiny_model_rows_by_hand() -> None:
    model = tiny()
    rows = summary(model, (1, 8, 8))
    assert rows == [
        LayerRow("conv", "Conv2d", (1, 2, 8, 8), 20, 20),
        LayerRow("relu", "ReLU", (1, 2, 8, 8), 0, 0),
        LayerRow("pool", "MaxPool2d", (1, 2, 4, 4), 0, 0),
        LayerRow("flat", "Flatten", (1, 32), 0, 0),
        LayerRow("fc", "Linear", (1, 3), 99, 99),
    ]
    assert total_params(rows) == total_params(model) == 119


def test_frozen_parameters_are_not_trainable() -> None:
    model = tiny()
    model.conv.weight.requires_grad_(False)  # 18 of the conv's 20
    rows = summary(model, (1, 8, 8))
    assert (rows[0].params, rows[0].trainable_params) == (20, 2)
    assert total_params(rows, trainable_only=True) == total_params(model, trainable_only=True) == 101
    text = format_summary(rows)
    assert "Total params: 119" in text and "Trainable params: 101" in text and "Non-trainable params: 18" in text


@pytest.mark.parametrize(("c", "k"), [(1, 7), (3, 11)])
def test_small_cnn_counts_by_hand(c: int, k: int) -> None:
    model = build("small_cnn", in_channels=c, num_classes=k, input_size=48)
    rows = {r.name: r for r in summary(model, (c, 48, 48))}
    expected = {
        "block1.conv": (c * 64 * 9, (1, 64, 48, 48)),      # 3x3 kernels, no bias
        "block1.bn": (2 * 64, (1, 64, 48, 48)),            # weight + bias per channel
        "block1.pool": (0, (1, 64, 24, 24)),
        "block2.conv": (64 * 128 * 9, (1, 128, 24, 24)),
        "block2.bn": (2 * 128, (1, 128, 24, 24)),
        "block2.pool": (0, (1, 128, 12, 12)),
        "block3.conv": (128 * 512 * 9, (1, 512, 12, 12)),
        "block3.bn": (2 * 512, (1, 512, 12, 12)),
        "block3.pool": (0, (1, 512, 6, 6)),
        "gap": (0, (1, 512, 1, 1)),
        "flatten": (0, (1, 512)),
        "fc": (512 * k + k, (1, k)),
    }
    for name, (params, shape) in expected.items():
        assert (rows[name].params, rows[name].output_shape) == (params, shape), name
    total = sum(p for p, _ in expected.values())
    assert total_params(list(rows.values())) == total_params(model) == total
    if (c, k) == (1, 7):
        assert total == 669_127
    text = format_summary(list(rows.values()), model=model)
    assert f"Total params: {total:,}" in text
    assert "block3.pool (MaxPool2d)" in text and "(N, 512, 6, 6)" in text


def test_modes_restored_hooks_removed_statistics_untouched() -> None:
    model = build("small_cnn", in_channels=1, num_classes=7, input_size=16, channels=(4, 8), dropout=0.5)
    model.train()
    model.block2.eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    user_hook = model.fc.register_forward_hook(lambda m, i, o: None)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, (1, 16, 16))
    assert [m.training for m in model.modules()] == modes
    assert list(model.fc._forward_hooks) == [user_hook.id]  # the user's hook stays, ours are gone
    user_hook.remove()
    assert_no_hooks(model)
    for key, value in model.state_dict().items():  # eval pass under no_grad: BN running stats unchanged
        assert torch.equal(value, stats[key]), key


def test_wrong_input_shape_is_a_clear_error_and_cleans_up() -> None:
    model = build("small_cnn", in_channels=1, num_classes=7, input_size=48).train()
    with pytest.raises(ValueError, match=r"cannot take an input of shape \(3, 48, 48\)"):
        summary(model, (3, 48, 48))
    assert all(m.training for m in model.modules())
    assert_no_hooks(model)


@pytest.mark.parametrize(("shape", "error", "match"), [
    ("1,48,48", TypeError, r"input_shape must be a sequence of positive ints"),
    ((1, 0, 48), ValueError, r"input_shape must hold positive ints .* got \(1, 0, 48\)"),
    ((), TypeError, r"input_shape must be a sequence"),
])
def test_bad_input_shape(shape: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        summary(tiny(), shape)  # type: ignore[arg-type]


class TwiceShared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)  # 20 parameters, used twice
        self.out = nn.Linear(4, 2)  # 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.fc(x)))


def test_module_called_twice_gives_two_rows_counted_once() -> None:
    rows = summary(TwiceShared(), (4,))
    assert [(r.name, r.params) for r in rows] == [("fc", 20), ("fc", 0), ("out", 10)]
    assert total_params(rows) == 30


def test_unused_module_parameters_are_reported() -> None:
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny()
            self.unused = nn.Linear(2, 2)  # 6 parameters never run

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = WithUnused()
    text = format_summary(summary(model, (1, 8, 8)), model=model)
    assert "Total params: 119" in text and "Parameters in modules that did not run: 6" in text


def test_cli_summary_model_name() -> None:
    result = CliRunner().invoke(main, ["summary", "small_cnn"])
    assert result.exit_code == 0, result.output
    assert "Total params: 669,127" in result.output and "block1.conv (Conv2d)" in result.output
    result = CliRunner().invoke(main, ["summary", "vgg_fer", "--input-shape", "3,16,16", "--classes", "2"])
    assert result.exit_code == 0, result.output
    assert "(N, 512, 1, 1)" in result.output and "fc (Linear)" in result.output and "(N, 2)" in result.output


@pytest.mark.parametrize(("args", "match"), [
    (["summary", "nonet"], "neither a run folder nor a model name; models: small_cnn, vgg_fer, resnet18"),
    (["summary", "small_cnn", "--input-shape", "1,48"], "expected C,H,W as three positive ints"),
    (["summary", "vgg_fer", "--input-shape", "1,8,8"], "vgg_fer needs input_size of at least 16x16"),
])
def test_cli_summary_bad_input(args: list[str], match: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert match in result.output
