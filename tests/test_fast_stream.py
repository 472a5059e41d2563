"""Streaming whole datasets: the same maps as one direct call, from every kind of source, written
atomically; peak memory that does not grow with the number of images (measured in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cnnlens.data.imageset import ImageSet
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.saliency import saliency
from cnnlens.explain.stream import stream_explain
from conftest import make_random_model


def dataset(n: int = 10, c: int = 1, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 7
    return ImageSet(images=images, labels=labels, classes=tuple("abcdefg"), names=tuple(f"img{i}" for i in range(n)))


@pytest.mark.parametrize("method", ["saliency", "grad-cam"])
def test_stream_equals_one_direct_call_for_every_source(tmp_path, method):
    model = make_random_model(1, seed=3)
    data = dataset(10)
    x = data.float_images()
    fn = saliency if method == "saliency" else grad_cam
    expected = fn(model, x)
    predicted = model(x).argmax(1)
    np.save(tmp_path / "images.npy", data.images.numpy())
    for source in (data, data.images, data.images.numpy(), x, tmp_path / "images.npy", str(tmp_path / "images.npy")):
        res = stream_explain(model, source, method, out=tmp_path / "maps.npy", batch_size=3)
        assert res.count == 10 and res.seconds > 0
        torch.testing.assert_close(torch.from_numpy(np.array(res.load())), expected, rtol=1e-5, atol=1e-6)
        assert np.load(res.targets).tolist() == predicted.tolist()  # the classes the maps explain


def test_targets_labels_and_fast_copy(tmp_path):
    model = make_random_model(3, seed=1)
    data = dataset(7, c=3, seed=2)
    x = data.float_images()
    res = stream_explain(model, data, "grad-cam", out=tmp_path / "cam.npy", target="labels", batch_size=4,
                         layer=model.conv_a, fast=False)
    exact_cam = grad_cam(model, x, data.labels, layer="conv_a", fast=False)
    torch.testing.assert_close(torch.from_numpy(res.load(mmap=False)), exact_cam, rtol=1e-5, atol=1e-6)
    assert np.load(res.targets).tolist() == data.labels.tolist()
    res = stream_explain(model, data, "grad-cam", out=tmp_path / "cam.npy", layer=model.conv_a, batch_size=4)
    torch.testing.assert_close(torch.from_numpy(res.load(mmap=False)),
                               grad_cam(model, x, np.load(res.targets).tolist(), layer="conv_a", fast=False),
                               rtol=1e-4, atol=1e-4 * float(exact_cam.max()))
    fast = stream_explain(model, data, "saliency", out=tmp_path / "sal.npy", target=2, batch_size=4)
    ref = saliency(model, x, 2, fast=False)
    torch.testing.assert_close(torch.from_numpy(fast.load(mmap=False)), ref, rtol=1e-4, atol=1e-4 * float(ref.max()))
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_any_callable_method_and_batch_size_independence(tmp_path):
    model = make_random_model(1, seed=4)
    data = dataset(9)

    def brightness(model, images, target=None):
        model(images)  # the predicted class is caught from this pass
        return images.mean(dim=1) * 2

    a = stream_explain(model, data, brightness, out=tmp_path / "a.npy", batch_size=1)
    b = stream_explain(model, data, brightness, out=tmp_path / "b.npy", batch_size=100)
    assert np.array_equal(a.load(), b.load())
    np.testing.assert_allclose(a.load(), data.float_images()[:, 0].numpy() * 2, rtol=1e-6)


def test_bad_inputs_are_clear_errors_and_leave_nothing_behind(tmp_path):
    model = make_random_model(1)
    data = dataset(4)
    with pytest.raises(ValueError, match="method must be one of 'saliency', 'grad-cam', 'grad-cam-pp', 'xgrad-cam', "
                                         "'layer-cam', 'hires-cam', 'eigen-cam' or a callable"):
        stream_explain(model, data, "lime", out=tmp_path / "m.npy")
    with pytest.raises(ValueError, match="out must name a .npy file"):
        stream_explain(model, data, out=tmp_path / "m.csv")
    with pytest.raises(ValueError, match=r"images must have shape \[N,C,H,W\]"):
        stream_explain(model, torch.zeros(4, 16, 16), out=tmp_path / "m.npy")
    with pytest.raises(ValueError, match="images path must be an existing .npy file"):
        stream_explain(model, tmp_path / "missing.npy", out=tmp_path / "m.npy")
    with pytest.raises(TypeError, match="images must be an ImageSet"):
        stream_explain(model, [1, 2], out=tmp_path / "m.npy")
    with pytest.raises(ValueError, match="target must be None, 'labels' \\(with an ImageSet\\)"):
        stream_explain(model, data.images, target="labels", out=tmp_path / "m.npy")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        stream_explain(model, data, batch_size=0, out=tmp_path / "m.npy")
    with pytest.raises(ValueError, match="target has 3 entries but images has N=4"):
        stream_explain(model, data, target=[1, 2, 3], out=tmp_path / "m.npy")
    np.save(tmp_path / "keep.npy", np.arange(3))

    def fails_late(model, images, target=None):
        if images.shape[0] < 2:
            raise RuntimeError("boom")
        return images[:, 0]

    with pytest.raises(RuntimeError, match="boom"):
        stream_explain(model, dataset(5), fails_late, out=tmp_path / "keep.npy", target=0, batch_size=2)
    assert np.load(tmp_path / "keep.npy").tolist() == [0, 1, 2]  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npy"]  # no half-written files


PROBE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from torch import nn
    from cnnlens.explain.stream import stream_explain
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    res = stream_explain(model, sys.argv[1], "saliency", out=sys.argv[2], batch_size=256)
    maps = np.load(sys.argv[2], mmap_mode="r")
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": res.seconds, "shape": list(maps.shape), "finite": bool(np.isfinite(maps[-1]).all())}))
""")


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    n = 2000  # 4N maps of 64x64 float32 are 94 MiB beyond N's: growth would be plain to see
    peaks = {}
    for count in (n, 4 * n):
        images = np.random.default_rng(count).integers(0, 256, (count, 1, 64, 64), dtype=np.uint8)
        np.save(tmp_path / "in.npy", images)
        del images
        proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        assert row["shape"] == [count, 64, 64] and row["finite"]
        peaks[count] = row["peak_mib"]
    assert peaks[4 * n] - peaks[n] < 25, peaks  # vs ~94 MiB if the maps were kept in memory
