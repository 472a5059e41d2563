"""docs/adding-a-method.md, done for real: a method (input x gradient, Shrikumar et al. 2016) is one
function plus one decorator, and then the runner, the CLI and the report take it with nothing else
changed. The page shows cnnlens's own ``input_x_gradient.py`` as it is; the test registers the same
function again as a method of one's own would be (``replace=True``: the name is taken; ``in_report=9``),
inside the test only (the ``method_registry`` fixture undoes it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from click.testing import CliRunner
from conftest import make_random_model
from torch import nn

from cnnlens._types import Reduce, Target
from cnnlens.cli import main
from cnnlens.explain import core, saliency
from cnnlens.explain.runner import run_methods

ROOT = Path(__file__).resolve().parents[1]


def test_the_page_shows_the_real_file_whole():
    page = (ROOT / "docs" / "adding-a-method.md").read_text()
    shown = re.search(r"```python\n(.*?)```", page, re.S)
    assert shown is not None
    assert shown.group(1) == (ROOT / "src" / "cnnlens" / "explain" / "input_x_gradient.py").read_text()


def define_input_x_gradient(registry):
    """The method's file as docs/adding-a-method.md shows it, registered as one's own method would be."""

    @registry.method("input-x-gradient", "Input x gradient", kind="gradient", in_report=9, replace=True,
                     paper=registry.Paper("Shrikumar et al.", 2016, "Not just a black box"))
    def input_x_gradient(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                         reduce: Reduce = "sum", fast: bool = True) -> torch.Tensor:
        """Input times gradient (Shrikumar et al. 2016): ``sum_c x * d logit_t / dx``, signed, ``[N,H,W]``.

        Raw ``[N,C,H,W]`` with ``reduce=None``: Captum's ``InputXGradient``.

        >>> maps = input_x_gradient(model, images, target=3)
        """
        grads = saliency(model, images, target, reduce=None, abs=False, fast=fast)
        return core.reduce_channels(images.detach() * grads, reduce)

    return input_x_gradient


def test_one_function_and_one_decorator_reach_the_runner_the_cli_and_the_report(method_registry, tmp_path):
    fn = define_input_x_gradient(method_registry)
    model = make_random_model(1, seed=0)
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    # the function itself, by value: images * gradient, summed over channels
    grads = saliency(model, images, [0, 1, 2], reduce=None, abs=False, fast=False)
    torch.testing.assert_close(fn(model, images, [0, 1, 2], fast=False), (images * grads).sum(1))

    # the runner takes it by name
    out = run_methods(model, images, [0, 1, 2], ["saliency", "input-x-gradient"])
    torch.testing.assert_close(out.maps["input-x-gradient"], fn(model, images, [0, 1, 2]))

    # the CLI lists it and runs it
    listed = CliRunner().invoke(main, ["explain", "--help"])
    assert "input-x-gradient" in "".join(listed.output.split())  # the help wraps at hyphens
    listed = CliRunner().invoke(main, ["methods", "input-x-gradient"])
    assert " ".join(listed.output.split()).startswith("input-x-gradient: Input x gradient (gradient) paper Shrikumar "
                                                      "et al. 2016, Not just a black box")
    import zoo_models
    from cnnlens.data.synth import write_faces

    write_faces(tmp_path / "faces", 21, seed=0)
    torch.save(zoo_models.build_sequential(size=16).state_dict(), tmp_path / "net.pt")
    cli = CliRunner()
    res = cli.invoke(main, ["import", "--model", "zoo_models:build_sequential", "--builder-kwargs", '{"size": 16}',
                            "--weights", str(tmp_path / "net.pt"), "--input-shape", "1,16,16", "--out", str(tmp_path / "run"),
                            "--classes", "angry,disgust,fear,happy,sad,surprise,neutral"])
    assert res.exit_code == 0, res.output
    res = cli.invoke(main, ["explain", str(tmp_path / "run"), "--data", f"synth:{tmp_path / 'faces'}", "--methods",
                            "saliency,input-x-gradient", "--images", "0,1", "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ex" / "index.json").read_text())["methods"] == ["saliency", "input-x-gradient"]


def test_the_report_offers_it_by_its_label(method_registry, tmp_path):
    define_input_x_gradient(method_registry)
    from cnnlens.data.synth import write_faces
    from cnnlens.data import load_dataset
    from cnnlens.models.foreign import Scored
    from cnnlens.report import ReportInputs, ReportOptions, default_methods, write_report

    assert "input-x-gradient" in default_methods()  # in_report=9: among the report's defaults, last
    write_faces(tmp_path / "faces", 42, seed=0)
    faces = load_dataset(f"synth:{tmp_path / 'faces'}", "test")
    model = Scored(make_random_model(1, seed=0))
    options = ReportOptions(progress=False, methods=("saliency", "input-x-gradient"), average_methods=(),
                            filter_layers=(), feature_map_layers=(), images_per_class=1)
    page = write_report(ReportInputs(model=model, dataset=faces, name="toy"), tmp_path / "report", options=options)
    html = page.read_text()
    assert "Input x gradient" in html
    report_json = json.loads((tmp_path / "report" / "data" / "report.json").read_text())
    assert "input-x-gradient" in json.dumps(report_json)
