"""`cnnlens demo`: stages run in order and are easy to extend; the whole pipeline end to end at a small size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnnlens.cli import main
from cnnlens.cli.demo_cmd import STAGES, Demo, run_demo


def test_stages_run_in_order_and_share_state(tmp_path: Path) -> None:
    seen: list[str] = []

    def first(demo: Demo) -> None:
        seen.append("first")
        demo.results["value"] = 41

    def second(demo: Demo) -> None:
        seen.append("second")
        demo.outputs["answer"] = demo.out / str(demo.results["value"] + 1)

    demo = Demo(out=tmp_path / "demo")
    seconds = run_demo(demo, [("one", first), ("two", second)])
    assert seen == ["first", "second"] and list(seconds) == ["one", "two"]
    assert demo.outputs == {"answer": tmp_path / "demo" / "42"}


def test_default_stages() -> None:
    assert [title for title, _ in STAGES] == ["synthesise faces", "train small_cnn", "evaluate",
                                              "score the explanations' faithfulness", "explain and write the report"]


def test_existing_folder_is_refused_before_any_stage(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep")
    ran: list[str] = []
    with pytest.raises(FileExistsError, match="not written by cnnlens .* not even with --overwrite"):
        run_demo(Demo(out=tmp_path / "demo", overwrite=True), [("x", lambda demo: ran.append("x"))])
    assert ran == [] and sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["mine.txt"]
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--overwrite"])
    assert result.exit_code == 1 and "not even with --overwrite" in result.output and "Traceback" not in result.output
    # an earlier demo is replaced only with --overwrite
    run_demo(Demo(out=tmp_path / "earlier"), [("x", lambda demo: ran.append("x"))])
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        run_demo(Demo(out=tmp_path / "earlier"), [("x", lambda demo: ran.append("y"))])
    run_demo(Demo(out=tmp_path / "earlier", overwrite=True), [("x", lambda demo: ran.append("z"))])
    assert ran == ["x", "z"]


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-images", "350", "--epochs", "2", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for stage in ("[1/5] synthesise faces", "[2/5] train small_cnn", "[3/5] evaluate", "[4/5] score", "[5/5] explain",
                  "Outputs:"):
        assert stage in result.output
    for rel in ("data/faces.csv", "data/faces.masks.npy", "run/config.json", "run/weights.safetensors",
                "run/checkpoint.pt", "run/history.csv", "run/curves.png", "run/split.json", "run/train.log",
                "run/eval/metrics.json", "run/eval/confusion.png", "run/faithfulness/faithfulness.json",
                "report/index.html"):
        assert (out / rel).is_file(), rel
        assert str(out / rel.split("/")[0]) in result.output
    # the evaluation is of the run's validation split: 20% of the 315 training faces, stratified
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    split = json.loads((out / "run" / "split.json").read_text())
    assert len(split["val"]) == 63 and len(split["train"]) == 252
    assert metrics["num_images"] == 63 and sum(map(sum, metrics["confusion"])) == 63
    # evaluate() on the best weights reproduces the best validation accuracy the training loop measured
    history = [line.split(",") for line in (out / "run" / "history.csv").read_text().splitlines()[1:]]
    assert metrics["accuracy"] == pytest.approx(max(float(row[4]) for row in history), abs=1e-5)
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["model"]["name"] == "small_cnn" and config["train"]["epochs"] == 2
    assert config["data"]["spec"] == f"synth:{out / 'data'}"

    # the report shows the faithfulness table the demo measured, and the page embeds its images
    page = (out / "report" / "index.html").read_text()
    faith = json.loads((out / "run" / "faithfulness" / "faithfulness.json").read_text())
    assert {row["method"] for row in faith["rows"]} >= {"saliency", "grad-cam", "occlusion", "random-order"}
    assert 'id="faithfulness"' in page and "data:image/png;base64," in page

    again = CliRunner().invoke(main, args + ["--overwrite"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
