"""Dataset jobs (cnnlens.jobs), local engine: per-image seeding, the shard format, resume, atomic shards, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_random_model

from cnnlens._atomic import OutputRefused
from cnnlens.explain import accel
from cnnlens.jobs import Work, compute, explain_dataset, image_seed, load_explanations
from cnnlens.jobs.shards import MANIFEST, SHARDS, shard_name

pytest.importorskip("pyarrow")

TESTS = Path(__file__).parent
METHODS = ("saliency", "grad-cam", "smoothgrad", "lime")
OPTIONS = {"smoothgrad": {"n_samples": 4}, "lime": {"n_samples": 24, "n_segments": 6}}


def _images(n: int, c: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def _work(**kw: object) -> Work:
    return Work(methods=METHODS, options=OPTIONS, scores=("deletion", "insertion"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("c", [1, 3], ids=["gray", "rgb"])
def test_an_images_columns_do_not_depend_on_its_batch_or_neighbours(c: int) -> None:
    """Deterministic mode: image 5's map and scores are the same bits alone, in a batch, in another order."""
    model = make_random_model(c, num_classes=4, seed=c)
    x = _images(8, c)
    ids = np.arange(100, 108)
    work = _work()
    with accel.deterministic():
        whole = compute(model, work, ids, x)
        order = [5, 2, 7]
        mixed = compute(model, work, ids[order], x[order])
        alone = compute(model, work, ids[5:6], x[5:6])
    for name, col in whole.items():
        assert np.array_equal(col[5], mixed[name][0]), name
        assert np.array_equal(col[5], alone[name][0]), name
        assert np.array_equal(col[[5, 2, 7]], mixed[name]), name
    assert set(whole) == set(work.columns())
    assert whole["saliency:map"].shape == (8, 16, 16) and whole["probabilities"].shape == (8, 4)
    assert np.allclose(whole["probabilities"].sum(1), 1, atol=1e-5)
    assert np.array_equal(whole["target"], whole["prediction"])
    assert ((whole["grad-cam:deletion_auc"] >= 0) & (whole["grad-cam:deletion_auc"] <= 1)).all()


def test_noise_is_seeded_by_image_id_not_by_position() -> None:
    model = make_random_model(1, num_classes=4, seed=1)
    x = _images(1).expand(2, -1, -1, -1).contiguous()  # the same image twice, under two ids
    work = Work(methods=("smoothgrad",), options={"smoothgrad": {"n_samples": 4}})
    a = compute(model, work, [3, 4], x)["smoothgrad:map"]
    b = compute(model, work, [3], x[:1])["smoothgrad:map"]
    assert not np.array_equal(a[0], a[1])  # another id, other noise
    assert np.array_equal(a[0], b[0])  # the same id, the same noise
    assert image_seed(0, 3, "smoothgrad") != image_seed(1, 3, "smoothgrad") != image_seed(0, 3, "lime")
    with pytest.raises(ValueError, match="one id per image"):
        compute(model, work, [1, 2, 3], x)


def test_shards_manifest_and_load(tmp_path: Path) -> None:
    model = make_random_model(1, num_classes=5, seed=2)
    x = _images(11)
    labels = torch.arange(11) % 5
    from cnnlens.data.imageset import ImageSet

    data = ImageSet(x, labels, tuple("abcde"), tuple(f"f{i}.png" for i in range(11)))
    res = explain_dataset(model, data, ["saliency", "grad-cam"], out=tmp_path / "job", shard_size=4, map_dtype="float16",
                          scores=["deletion"], target="labels", description={"spec": "test"})
    assert (res.n_images, res.computed, res.shards, res.skipped) == (11, 11, 3, 0)
    files = sorted(p.name for p in (tmp_path / "job" / SHARDS).iterdir())
    assert files == [shard_name(k) for k in range(3)]
    got = load_explanations(tmp_path / "job")
    assert got.ids.tolist() == list(range(11)) and got.names == list(data.names)
    assert got.maps["saliency"].dtype == np.float16 and got.maps["grad-cam"].shape == (11, 16, 16)
    assert np.array_equal(got.targets, labels.numpy()) and np.array_equal(got.labels, labels.numpy())
    with torch.no_grad():
        probs = model(x.float() / 255).softmax(1).numpy()
    assert np.allclose(got.probabilities, probs, atol=1e-5)
    assert np.array_equal(got.predictions, probs.argmax(1))
    manifest = got.manifest
    assert manifest["work"]["methods"] == ["saliency", "grad-cam"] and manifest["work"]["options"]["grad-cam"]["layer"]
    assert manifest["model"]["sha256"] and manifest["data"]["spec"] == "test" and manifest["cnnlens"]
    assert manifest["n_shards"] == 3 and manifest["runs"][0]["engine"] == "local"
    frame = got.frame()
    assert list(frame.columns[:5]) == ["id", "name", "label", "target", "prediction"]
    assert "grad-cam:deletion_auc" in frame and len(frame) == 11
    assert load_explanations(tmp_path / "job", methods=["grad-cam"], maps=False).maps == {}
    with pytest.raises(ValueError, match="not in"):
        load_explanations(tmp_path / "job", methods=["lime"])


def test_rerun_skips_complete_shards_and_recomputes_a_missing_one(tmp_path: Path) -> None:
    model = make_random_model(1, num_classes=3, seed=3)
    x = _images(10)
    out = tmp_path / "job"
    kw = {"out": out, "shard_size": 3, "options": OPTIONS}
    with accel.deterministic():
        explain_dataset(model, x, ["saliency", "smoothgrad"], **kw)
        before = load_explanations(out)
        again = explain_dataset(model, x, ["saliency", "smoothgrad"], **kw)
        assert (again.computed, again.skipped) == (0, 4)
        (out / SHARDS / shard_name(2)).unlink()
        with pytest.raises(ValueError, match="unfinished job: 1 of 4 shards missing"):
            load_explanations(out)
        assert len(load_explanations(out, partial=True).ids) == 7
        resumed = explain_dataset(model, x, ["saliency", "smoothgrad"], **kw)
    assert (resumed.computed, resumed.skipped) == (3, 3)
    after = load_explanations(out)
    for m in before.maps:
        assert np.array_equal(before.maps[m], after.maps[m])
    assert len(json.loads((out / MANIFEST).read_text())["runs"]) == 2  # the run that computed nothing is not recorded


def test_other_settings_are_refused_overwrite_starts_over(tmp_path: Path) -> None:
    model = make_random_model(1, num_classes=3, seed=3)
    x = _images(5)
    out = tmp_path / "job"
    explain_dataset(model, x, ["saliency"], out=out, shard_size=2)
    with pytest.raises(OutputRefused, match="other settings.*work.methods"):
        explain_dataset(model, x, ["grad-cam"], out=out, shard_size=2)
    with pytest.raises(OutputRefused, match="shard_size"):
        explain_dataset(model, x, ["saliency"], out=out, shard_size=3)
    res = explain_dataset(model, x, ["grad-cam"], out=out, shard_size=3, overwrite=True)
    assert res.computed == 5 and sorted(p.name for p in (out / SHARDS).iterdir()) == [shard_name(0), shard_name(1)]
    assert list(load_explanations(out).maps) == ["grad-cam"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputRefused, match="not written by cnnlens"):
        explain_dataset(model, x, ["saliency"], out=foreign, overwrite=True)
    (out / "extra.txt").write_text("mine")
    with pytest.raises(OutputRefused, match="extra.txt"):
        explain_dataset(model, x, ["grad-cam"], out=out, shard_size=3)


def test_ray_engine_without_ray_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'cnnlens\[ray\]'"):
        explain_dataset(make_random_model(1, 3), _images(2), ["saliency"], out=tmp_path / "j", engine="ray")
    assert not (tmp_path / "j").exists()  # refused before any work


KILLED = textwrap.dedent("""
    import sys, time
    import torch
    sys.path.insert(0, sys.argv[1])
    from conftest import make_random_model
    import pyarrow.parquet as pq
    from cnnlens.explain import accel
    from cnnlens.jobs import explain_dataset

    write = pq.write_table
    def slow_second_write(table, where, **kw):  # the second shard's file is written whole, then the process waits
        write(table, where, **kw)
        if table.column("id")[0].as_py() == 3:
            print("writing", where, flush=True)
            time.sleep(60)
    pq.write_table = slow_second_write
    torch.manual_seed(0)
    x = (torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with accel.deterministic():
        explain_dataset(make_random_model(1, 3, seed=4), x, ["saliency", "smoothgrad"], out=sys.argv[2], shard_size=3,
                        options={"smoothgrad": {"n_samples": 4}})
""")


def test_kill_during_a_shard_write_leaves_no_partial_shard_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "job"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(TESTS), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("writing"), line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    shards = sorted(p.name for p in (out / SHARDS).iterdir())
    assert shard_name(0) in shards and shard_name(1) not in shards  # the killed write never became a shard
    assert any(name.startswith(f".{shard_name(1)}.") and name.endswith(".tmp") for name in shards)
    x = (torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    model = make_random_model(1, 3, seed=4)
    kw = {"shard_size": 3, "options": {"smoothgrad": {"n_samples": 4}}}
    with accel.deterministic():
        resumed = explain_dataset(model, x, ["saliency", "smoothgrad"], out=out, **kw)
        fresh = explain_dataset(model, x, ["saliency", "smoothgrad"], out=tmp_path / "fresh", **kw)
    assert (resumed.computed, resumed.skipped) == (5, 1)
    assert sorted(p.name for p in (out / SHARDS).iterdir()) == [shard_name(k) for k in range(3)]  # temp removed
    a, b = load_explanations(out), load_explanations(tmp_path / "fresh")
    assert a.ids.tolist() == list(range(8))
    for m in a.maps:
        assert np.array_equal(a.maps[m], b.maps[m])


def test_local_engine_holds_one_shard_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local engine holds one shard at a time: each compute() call sees at most shard_size images."""
    import cnnlens.jobs.local as local

    seen: list[int] = []
    real = local.compute

    def spy(model, work, ids, images, labels=None):  # type: ignore[no-untyped-def]
        seen.append(len(images))
        return real(model, work, ids, images, labels)

    monkeypatch.setattr(local, "compute", spy)
    explain_dataset(make_random_model(1, 3), _images(10), ["saliency"], out=tmp_path / "j", shard_size=4)
    assert seen == [4, 4, 2]


def test_skip_unsupported_leaves_out_a_method_that_refuses_the_model(tmp_path: Path) -> None:
    class FlatHead(torch.nn.Module):  # no global average pooling: CAM refuses it
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 16 * 16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    model = FlatHead().eval()
    with pytest.raises(ValueError, match="CAM needs"):
        explain_dataset(model, _images(3), ["saliency", "cam"], out=tmp_path / "a")
    explain_dataset(model, _images(3), ["saliency", "cam"], out=tmp_path / "b", skip_unsupported=True)
    got = load_explanations(tmp_path / "b")
    assert list(got.maps) == ["saliency"] and "CAM needs" in got.manifest["skipped"]["cam"]


def test_the_users_model_is_left_as_it_was(tmp_path: Path) -> None:
    model = make_random_model(1, num_classes=3, seed=5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain_dataset(model, _images(4), ["saliency", "grad-cam"], out=tmp_path / "j", scores=["deletion"])
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters())
