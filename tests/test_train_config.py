"""TrainConfig: checked on construction, JSON round trip, unknown/missing fields refused, differences."""

from __future__ import annotations

import json

import pytest

from cnnlens.train.config import TrainConfig


def test_round_trip_through_json() -> None:
    config = TrainConfig(data="fer:x.csv", epochs=3, lr=0.01, optimizer="sgd", image_size=32, num_threads=2)
    back = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config


@pytest.mark.parametrize(("changes", "match"), [
    ({"optimizer": "rmsprop"}, "optimizer must be one of 'adam', 'sgd', got 'rmsprop'"),
    ({"schedule": "step"}, "schedule must be one of 'onecycle', 'cosine', 'constant', got 'step'"),
    ({"device": "tpu"}, "device must be one of 'auto', 'cpu', 'cuda', got 'tpu'"),
    ({"val_fraction": 0.0}, "val_fraction must be strictly between 0 and 1"),
    ({"val_fraction": 1.0}, "val_fraction must be strictly between 0 and 1"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
    ({"rotation": 200.0}, r"rotation must be in \[0, 180\]"),
    ({"shift": -1}, "shift must be >= 0"),
    ({"patience": -2}, "patience must be >= 0"),
    ({"image_size": 0}, "image_size must be a positive number"),
    ({"num_threads": 0}, "num_threads must be >= 1"),
    ({"data": ""}, "data must be a dataset spec"),
])
def test_bad_values_name_the_field(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"data": "synth:d", **changes})


@pytest.mark.parametrize(("changes", "match"), [
    ({"epochs": 2.5}, "epochs must be int"),
    ({"epochs": True}, "epochs must be int"),  # JSON true is not a number of epochs
    ({"flip": 1}, "flip must be bool"),
    ({"lr": "0.1"}, "lr must be float"),
    ({"image_size": "48"}, "image_size must be int | None"),
    ({"data": None}, "data must be str"),
])
def test_wrong_types_name_the_field(changes: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        TrainConfig(**{"data": "synth:d", **changes})


def test_int_accepted_for_float_fields() -> None:
    assert TrainConfig(data="synth:d", lr=1, rotation=0).lr == 1


def test_from_dict_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(ValueError, match=r"run/config.json: unknown training option\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"data": "synth:d", "learning_rate": 0.1}, source="run/config.json")
    with pytest.raises(ValueError, match="has no 'data'"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="must be a JSON object"):
        TrainConfig.from_dict(["synth:d"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cfg.json: epochs must be >= 1"):
        TrainConfig.from_dict({"data": "synth:d", "epochs": 0}, source="cfg.json")


def test_differences_ignore_runtime_fields() -> None:
    a = TrainConfig(data="synth:d", epochs=3, device="cpu", num_threads=1)
    b = a.replace(device="cuda", num_threads=4)
    assert a.differences(b) == {}
    c = a.replace(lr=0.5, epochs=4)
    assert a.differences(c) == {"lr": (1e-3, 0.5), "epochs": (3, 4)}


@pytest.mark.parametrize(("spec", "flip"), [("fer:x.csv", True), ("synth:d", True), ("food11:d", True),
                                            ("folder:digits", False)])
def test_flips_default_by_kind_of_data_and_are_stored_as_decided(spec: str, flip: bool) -> None:
    config = TrainConfig(data=spec)
    assert config.flip is flip and config.to_dict()["flip"] is flip
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig(data=spec, flip=not flip).flip is (not flip)  # --flip / --no-flip win
    assert config.replace(epochs=2).flip is flip


def test_a_stored_flip_is_kept_whatever_the_kind() -> None:
    # a run written before the per-kind default (flip true on a folder) resumes as it was trained
    old = TrainConfig.from_dict({"data": "folder:digits", "flip": True})
    assert old.flip is True and old.differences(TrainConfig(data="folder:digits", flip=True)) == {}
