"""Run folders read back safely: malicious pickles refused unexecuted, corrupt or foreign files named clearly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cnnlens.train import TrainConfig, load_checkpoint, load_run, load_weights
from cnnlens.train import run as runfiles
from cnnlens.models import build


class _Payload:
    """Pickles to a call of ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _small_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A run folder written by hand: config.json and weights of a narrow small_cnn on 16x16 gray images."""
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(data="synth:nowhere", epochs=1)
    kwargs = {"in_channels": 1, "num_classes": 3, "input_size": [16, 16], "channels": [4, 8]}
    manifest = runfiles.run_manifest(config, kwargs, (1, 16, 16), ("a", "b", "c"), 10)
    runfiles.write_json(run / runfiles.CONFIG_FILE, manifest)
    torch.manual_seed(0)
    model = build("small_cnn", **{**kwargs, "input_size": (16, 16)})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, so a load that skipped them shows
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    runfiles.save_weights(run / runfiles.WEIGHTS_FILE, model)
    return run, model.eval()


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "payload-ran"
    # The payload is live: an unsafe load really would run it (the oracle that the test is not vacuous).
    live = tmp_path / "live.pt"
    torch.save({"x": _Payload(tmp_path / "live-ran")}, live)
    torch.load(live, weights_only=False)
    assert (tmp_path / "live-ran").exists()

    evil = tmp_path / "checkpoint.pt"
    # plain data only besides the payload (a tensor pickled without torch.save is itself refused)
    good = {k: 0 for k in runfiles.CHECKPOINT_KEYS} | {"version": 1, "model": {"w": [0.0, 1.0]}}
    good["optimizer"] = _Payload(marker)
    if how == "torch.save":
        torch.save(good, evil)
    else:
        evil.write_bytes(pickle.dumps(good, protocol=int(how[-1])))
    with pytest.raises(ValueError, match="checkpoint.pt was refused and nothing in it was run") as err:
        load_checkpoint(evil)
    if how != "pickle protocol 5":  # protocol 5 is refused at its first opcode, before the global is read
        assert "it would construct io.open" in str(err.value)
    assert not marker.exists()


def test_malicious_checkpoint_refused_on_resume(tmp_path: Path) -> None:
    run, _ = _small_run(tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"version": 1, "model": _Payload(marker)}, run / runfiles.CHECKPOINT_FILE)
    config = TrainConfig.from_dict(runfiles.read_manifest(run)["train"])
    from cnnlens.train import train

    with pytest.raises(ValueError, match="checkpoint.pt was refused"):  # before the (missing) data is touched
        train(config, run, resume=True, progress=False)
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="checkpoint.pt is not a readable checkpoint \\(truncated or corrupt\\?\\)"):
        load_checkpoint(path)


def test_foreign_checkpoint_layout(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)  # a plain PyTorch checkpoint, not a cnnlens one
    with pytest.raises(ValueError, match=r"not a cnnlens checkpoint: missing \['version', 'epoch', 'model'"):
        load_checkpoint(path)
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="expected a dict, got list"):
        load_checkpoint(path)


def test_weights_with_wrong_keys_or_shapes(tmp_path: Path) -> None:
    run, model = _small_run(tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    wrong_shape = dict(state, **{"fc.weight": torch.zeros(5, 8)})
    save_file(wrong_shape, str(tmp_path / "w1.safetensors"))
    with pytest.raises(ValueError, match=r"does not fit the model SmallCNN: wrong shape/dtype \['fc.weight: \(5, 8\)"):
        load_weights(tmp_path / "w1.safetensors", build("small_cnn", in_channels=1, num_classes=3, input_size=16, channels=[4, 8]))
    renamed = {("head." + k if k.startswith("fc.") else k): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "w2.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['fc.weight', 'fc.bias'\]; unexpected \['head.fc.bias', 'head.fc.weight'\]"):
        load_weights(tmp_path / "w2.safetensors", build("small_cnn", in_channels=1, num_classes=3, input_size=16, channels=[4, 8]))


def test_weights_file_that_is_not_safetensors(tmp_path: Path) -> None:
    run, _ = _small_run(tmp_path)
    torch.save({"fc.weight": torch.zeros(3, 8)}, run / runfiles.WEIGHTS_FILE)  # a pickle under the safetensors name
    with pytest.raises(ValueError, match="weights.safetensors is not a readable safetensors file"):
        load_run(run)
    good = (tmp_path / "good.safetensors")
    runfiles.save_weights(good, build("small_cnn", in_channels=1, num_classes=3, input_size=16, channels=[4, 8]))
    (run / runfiles.WEIGHTS_FILE).write_bytes(good.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_run(run)


def test_load_run_restores_the_model_exactly(tmp_path: Path) -> None:
    run_dir, model = _small_run(tmp_path)
    run = load_run(run_dir)
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert not run.model.training
    assert all(not m.training for m in run.model.modules())
    torch.testing.assert_close(run.model(x), model(x), rtol=0, atol=0)
    assert run.classes == ("a", "b", "c") and run.input_shape == (1, 16, 16)
    assert run.config.data == "synth:nowhere" and run.history == []


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such folder"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a cnnlens run folder: config.json is missing"):
        load_run(tmp_path)
    run, _ = _small_run(tmp_path)
    (run / runfiles.WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="weights.safetensors is missing"):
        load_run(run)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.pop("classes"), r"missing key\(s\) \['classes'\]"),
    (lambda m: m.update(version=7), "run format version 7"),
    (lambda m: m.update(input_shape=[1, 16]), r"'input_shape' must be \[C, H, W\]"),
    (lambda m: m["train"].update(epochs=0), "epochs must be >= 1"),
    (lambda m: m["train"].update(evil="__import__('os')"), r"unknown training option\(s\) \['evil'\]"),
])
def test_bad_config_json(tmp_path: Path, edit, match: str) -> None:
    run, _ = _small_run(tmp_path)
    manifest = json.loads((run / "config.json").read_text())
    edit(manifest)
    (run / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=match):
        load_run(run)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_run(run)


def test_split_checked_against_the_data(tmp_path: Path) -> None:
    runfiles.write_split(tmp_path, 0, torch.tensor([0, 2, 3]), torch.tensor([1, 4]), n=5)
    train_idx, val_idx = runfiles.read_split(tmp_path, 5)
    assert train_idx.tolist() == [0, 2, 3] and val_idx.tolist() == [1, 4]
    with pytest.raises(ValueError, match="made for a dataset of 5\\+ images, but the data now has 7"):
        runfiles.read_split(tmp_path, 7)


def test_resolve_device() -> None:
    assert runfiles.resolve_device("cpu") == torch.device("cpu")
    assert runfiles.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        runfiles.resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            runfiles.resolve_device("cuda")


def test_a_crop_run_loads_its_images_the_way_it_trained(tmp_path: Path) -> None:
    # Photos of two shapes, trained with --resize crop: the run records the policy and every later load
    # (run.dataset) crops the same way, from each photo's own resolution.
    import numpy as np
    from PIL import Image

    from cnnlens.data import load_dataset
    from cnnlens.train import train

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(6):
            shape = (20, 40) if i % 2 else (40, 20)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L").save(tmp_path / "pets" / cls / f"{i}.png")
    spec = f"folder:{tmp_path / 'pets'}"
    config = TrainConfig(data=spec, image_size=16, resize="crop", epochs=1, batch_size=4, val_fraction=0.5,
                         model="small_cnn", device="cpu")
    run = train(config, tmp_path / "run", progress=False)
    manifest = json.loads((tmp_path / "run" / "config.json").read_text())
    assert manifest["preprocess"]["resize"] == "crop" and manifest["train"]["resize"] == "crop"
    assert run.preprocess.resize == "crop"
    cropped = load_dataset(spec, "train", image_size=16, resize="crop")
    both = torch.cat([run.dataset("train").images, run.dataset("val").images])
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, cropped.images.numpy()))
    squashed = load_dataset(spec, "train", image_size=16)
    assert not torch.equal(cropped.images, squashed.images)
