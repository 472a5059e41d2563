"""Speed machinery: folded BatchNorm (worked out by hand and against the model), channels-last copies,
measured batch sizes (a fake workload with a known best size), rank agreement of maps."""

from __future__ import annotations

import inspect
import math
import time

import pytest
import torch
from torch import nn

from cnnlens.explain import accel
from cnnlens.explain.accel.copies import fold_batchnorm, foldable_pairs, rank_correlation
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.lime import lime_explain
from cnnlens.explain.saliency import saliency
from cnnlens.models import build
from conftest import assert_model_untouched, make_random_model


def random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def test_fold_matches_hand_computed_weights():
    conv = nn.Conv2d(1, 1, 1, bias=True)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(0.5)
        bn.bias.fill_(-1.0)
    model = nn.Sequential(conv, bn).eval()
    folded = fold_batchnorm(model)
    # W' = 2 * 0.5 / sqrt(4) = 0.5; b' = (1 - 3) * 0.5 / 2 + (-1) = -1.5
    assert isinstance(folded[1], nn.Identity)
    assert folded[0].weight.item() == pytest.approx(0.5)
    assert folded[0].bias.item() == pytest.approx(-1.5)
    x = torch.tensor([[[[4.0]]]])
    assert folded(x).item() == pytest.approx(0.5 * 4 - 1.5)
    assert model(x).item() == pytest.approx(0.5 * 4 - 1.5)


@pytest.mark.parametrize("name", ["small_cnn", "vgg_fer"])
def test_folded_model_computes_the_same_function_and_keeps_names(name):
    model = random_bn(build(name, in_channels=3, num_classes=5, input_size=16, channels=(4, 8, 8, 8)[: 3 if name == "small_cnn" else 4]))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    folded = fold_batchnorm(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert [n for n, _ in folded.named_modules()] == [n for n, _ in model.named_modules()]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the user's model is not touched


def test_fold_leaves_the_users_model_untouched_and_respects_keep():
    model = random_bn(build("small_cnn", in_channels=1, num_classes=4, input_size=16, channels=(4, 8, 8)))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    folded = fold_batchnorm(model, keep=["block3.conv"])
    assert_model_untouched(model, modes)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not folded.training
    assert isinstance(folded.block1.bn, nn.Identity) and isinstance(folded.block2.bn, nn.Identity)
    assert isinstance(folded.block3.bn, nn.BatchNorm2d)  # kept: Grad-CAM reads block3.conv's own output


def test_fold_skips_pairs_that_are_not_bn_of_conv():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)
            self.stat_free = nn.BatchNorm2d(2, track_running_stats=False)
            self.conv2 = nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y + self.stat_free(self.conv2(x))  # conv output read twice; BN without stats

    model = random_bn(Shared())
    assert foldable_pairs(model) == []
    residual = make_random_model(1)
    assert ("conv_a", "bn_a") in foldable_pairs(residual)
    assert ("conv_b", "bn_b") in foldable_pairs(residual)


def test_untraceable_model_is_copied_unfolded():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent branch: fx cannot trace it

    model = random_bn(Dynamic())
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d) and folded is not model
    x = torch.rand(1, 1, 5, 5)
    torch.testing.assert_close(folded(x), model(x))


def test_prepared_model_gives_the_same_gradients_in_channels_last():
    model = make_random_model(3, seed=4)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    fast = accel.prepare(model)
    conv = fast.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert not any(p.requires_grad for p in fast.parameters())
    exact = saliency(model, x, [0, 1], reduce=None, fast=False)
    torch.testing.assert_close(saliency(fast, x, [0, 1], reduce=None), exact, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(saliency(model, x, [0, 1], reduce=None), exact, rtol=1e-4, atol=1e-5)  # the default
    # Grad-CAM on a kept layer: its conv still outputs what the model's conv outputs
    kept = accel.prepare(model, keep=["head.0"])
    exact = grad_cam(model, x, 2, layer="head.0", fast=False)
    torch.testing.assert_close(grad_cam(kept, x, 2, layer="head.0"), exact, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_cam(model, x, 2, layer=model.head[0]), exact, rtol=1e-4, atol=1e-5)


def test_prepared_copy_is_reused_until_the_model_changes():
    model = make_random_model(1, seed=8)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    first = accel.prepared(model)
    assert first is not model and accel.prepared(model) is first and accel.prepared(first) is first
    assert accel.prepared(model, keep=["head.0"]) is not first  # Grad-CAM's layer kept: its own copy

    def same_logits() -> None:
        with torch.no_grad():
            torch.testing.assert_close(accel.prepared(model)(x), model.eval()(x), rtol=1e-4, atol=1e-5)

    # each way a user changes weights makes a new copy that computes the new function
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    torch.optim.SGD(model.parameters(), lr=0.5).step()  # in place: bumps the tensor's version
    second = accel.prepared(model)
    assert second is not first
    same_logits()
    model.load_state_dict(make_random_model(1, seed=9).state_dict())
    assert accel.prepared(model) is not second
    same_logits()
    third = accel.prepared(model)
    model.stem[0].weight.data.mul_(-1.0)  # through .data: no version bump, caught by the values' bit sums
    fourth = accel.prepared(model)
    assert fourth is not third
    same_logits()
    # one value no sample of a few per tensor would read: every value counts
    weight = model.stem[0].weight
    assert weight.numel() > 16
    weight.data.view(-1)[weight.numel() // 16 + 1] += 0.25
    fifth = accel.prepared(model)
    assert accel.prepared(model) is not fourth
    same_logits()
    # the values are summed as whole 8-byte words; an odd float32 tensor's last value is summed on its own
    odd = next(t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and t.numel() % 2)
    odd.data.view(-1)[-1] += 0.25
    assert accel.prepared(model) is not fifth
    same_logits()
    model.head[1] = nn.Tanh()  # a module swapped
    same_logits()
    model.stem[1].running_var.data = model.stem[1].running_var.data * 4  # a buffer replaced
    same_logits()


def test_small_tensors_fingerprinted_together_still_tell_every_change():
    from cnnlens.explain.accel.copies import FLOAT_SUM_VALUES, SMALL_TENSOR, model_state

    model = make_random_model(1, seed=8)
    small = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and t.numel() < SMALL_TENSOR]
    assert len(small) >= 2
    _, before = model_state(model)
    a, b = small[0].data.view(-1), small[1].data.view(-1)
    bits_a, bits_b = a.view(torch.int32), b.view(torch.int32)
    bits_a[0] += 1  # one ulp up in one tensor, one ulp down in the next: the plain word sum balances
    bits_b[0] -= 1
    _, after = model_state(model)
    assert not torch.equal(before, after)
    bits_a[0] -= 1
    bits_b[0] += 1
    assert torch.equal(model_state(model)[1], before)  # and back: the same fingerprint
    a[1], a[2] = a[2].item(), a[1].item()  # two values swapped within a tensor
    assert a[1] != a[2] and not torch.equal(model_state(model)[1], before)
    # a large tensor: its word sum reads every value, its float sum a prefix (a sign flip of all moves both)
    big = nn.Conv2d(64, 64, 5)
    assert big.weight.numel() > max(SMALL_TENSOR, FLOAT_SUM_VALUES)
    start = model_state(big)[1]
    big.weight.data.mul_(-1.0)
    flipped = model_state(big)[1]
    assert not torch.equal(flipped, start)
    big.weight.data.view(-1)[-1] += 0.25  # one value past the float sum's prefix
    assert not torch.equal(model_state(big)[1], flipped)


def test_prepared_runs_the_model_itself_when_a_copy_would_differ():
    model = make_random_model(1, seed=8)
    seen: list[int] = []
    handle = model.head[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        assert accel.prepared(model) is model  # the user's hook must see the explained batches
        saliency(model, torch.rand(2, 1, 16, 16), 0)
        assert seen == [2]
    finally:
        handle.remove()
    assert accel.prepared(model) is not model

    class Uncopyable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def __deepcopy__(self, memo: dict) -> nn.Module:
            raise TypeError("cannot copy me")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    odd = Uncopyable()
    assert accel.prepared(odd) is odd
    assert saliency(odd, torch.rand(1, 1, 2, 2), 0).shape == (1, 2, 2)


def test_prepared_copies_go_with_their_model():
    import gc
    import weakref

    model = make_random_model(1, seed=8)
    copy_ref = weakref.ref(accel.prepared(model))
    gc.collect()
    assert copy_ref() is not None  # cached while the model lives
    del model
    gc.collect()
    assert copy_ref() is None  # and freed with it


def test_fast_forward_matches_logits_and_bf16_is_close():
    model = make_random_model(1, seed=6)
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    out = accel.fast_forward(model)(x)
    assert out.dtype == torch.float32 and torch.is_inference(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    low = accel.fast_forward(model, precision="bfloat16")(x)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()  # bfloat16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16', got 'half'"):
        accel.fast_forward(model, precision="half")


def test_tuned_batch_size_finds_the_known_best_and_caches_it():
    calls: list[int] = []

    def run(batch: torch.Tensor) -> None:
        # per item: 1 ms at 16, 2 ms at 8 and 32, 3 ms at 4: a known optimum
        calls.append(batch.shape[0])
        # busy, not asleep: single-threaded, the tuner reads this thread's CPU time, which a sleep does not use
        end = time.thread_time() + batch.shape[0] * 1e-3 * (1 + abs(math.log2(batch.shape[0]) - 4))
        while time.thread_time() < end:
            pass

    accel.clear_caches()
    example = torch.zeros(1, 3)
    assert accel.tuned_batch_size(run, example, key=("toy",), candidates=(4, 8, 16, 32)) == 16
    measured = len(calls)
    assert measured >= 4 * 2  # a warm-up and at least one timed run per size
    assert accel.tuned_batch_size(run, example, key=("toy",), candidates=(4, 8, 16, 32)) == 16
    assert len(calls) == measured  # cached: nothing ran again
    accel.clear_caches()


def test_tuned_batch_size_rejects_bad_arguments():
    with pytest.raises(ValueError, match="candidates must be positive ints"):
        accel.tuned_batch_size(lambda b: None, torch.zeros(1, 2), key=("bad",), candidates=(0, 4))
    with pytest.raises(ValueError, match="example must hold at least one item"):
        accel.tuned_batch_size(lambda b: None, torch.zeros(0, 2), key=("bad",))


def test_rank_correlation_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    rho = rank_correlation(a, b)
    assert rho.tolist() == pytest.approx([1.0, -1.0, 0.0])
    # ranks (0,1,2,3) vs (1,0,2,3): 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert rank_correlation(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([[2.0, 1, 3, 4]])).item() == pytest.approx(0.8)
    # ties take their average rank, and two identical constant maps agree (the faithfulness rule)
    assert rank_correlation(torch.tensor([[1.0, 1, 2, 3]]), torch.tensor([[1.0, 2, 3, 4]])).item() == pytest.approx(0.9486833)
    assert rank_correlation(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 1.0
    with pytest.raises(ValueError, match="maps must have the same shape"):
        rank_correlation(a, b[:2])


def test_precision_agreement_reports_changed_predictions():
    ref = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    other = ref + torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    logits_a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    logits_b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    agree = accel.precision_agreement(ref, other, logits_a, logits_b)
    assert agree["spearman_min"] == pytest.approx(1.0)
    assert agree["max_abs_diff"] == pytest.approx(0.5)
    assert agree["max_rel_diff"] == pytest.approx(0.25)  # 0.5 over the first map's max |value| 2
    assert agree["changed_predictions"] == pytest.approx(0.5)


@pytest.mark.skipif("fast" not in inspect.signature(lime_explain).parameters,
                    reason="lime_explain() has no fast= option yet (the patch in the speed report wires it)")
def test_lime_fast_option_gives_the_same_explanation():
    model = make_random_model(1, seed=9)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    segments = (torch.arange(16)[:, None] // 4 * 4 + torch.arange(16)[None, :] // 4).expand(2, 16, 16)

    def run(**kw: object) -> object:
        return lime_explain(model, x, [1, 2], segmentation=segments, n_samples=64,
                            generator=torch.Generator().manual_seed(0), **kw)

    ref, fast = run(fast=False), run()  # the model on every masked image / the default fast path
    assert torch.equal(ref.samples, fast.samples)  # same masks: only the scoring differs
    torch.testing.assert_close(fast.sample_scores, ref.sample_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.weights, ref.weights, rtol=1e-4, atol=1e-5)
