"""``cnnlens methods``: every registered method with its kind, paper and options, read from the registry;
and ``--methods all`` end to end: ``cnnlens explain``, the report's method chooser, the faithfulness table."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from cnnlens.cli import main
from cnnlens.cli._options import parse_options
from cnnlens.explain import registry
from cnnlens.explain.registry import Paper
from cnnlens.explain.runner import check_options, used_options

#: the one built-in method without a paper of its own (cnnlens composed it: Captum's ablation, superpixels)
OWN = ["feature-ablation"]


def methods_cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["methods", *args], catch_exceptions=False)


def flat(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------- the papers


def test_every_built_in_method_names_the_paper_its_docstring_cites() -> None:
    own = []
    for m in registry.registered():
        assert isinstance(m.paper, Paper), m.name
        assert m.paper.title.strip() and m.paper.authors.strip(), m.name
        if m.paper.year is None:
            own.append(m.name)
            assert str(m.paper).startswith("cnnlens's own: ") and m.paper.cite == "cnnlens's own"
            continue
        # the module docstring's first paragraph cites the same first author and year, as "Name ... 2017"
        doc = sys.modules[m.fn.__module__].__doc__.split("\n\n")[0]
        surname = re.split(r"[ ,&]", m.paper.authors)[0]
        assert re.search(rf"{surname}[^()]*{m.paper.year}", doc), (m.name, m.paper.cite, doc)
        assert m.paper.cite == f"{m.paper.authors} {m.paper.year}" and str(m.paper).startswith(m.paper.cite + ", ")
    assert own == OWN


def test_bad_papers_are_clear(method_registry: ModuleType) -> None:
    with pytest.raises(ValueError, match="Paper.year must be the year it appeared .* got 17"):
        Paper("Selvaraju et al.", 17, "Grad-CAM")
    with pytest.raises(ValueError, match=r"got None; a method of cnnlens's own making says so with Paper.own"):
        Paper("Selvaraju et al.", None, "Grad-CAM")
    with pytest.raises(ValueError, match="Paper.title must be the paper's title"):
        Paper("Selvaraju et al.", 2017, " ")
    with pytest.raises(TypeError, match=r"method 'toy': paper must be a registry.Paper\(authors, year, title\) or None"):
        method_registry.method("toy", "Toy", kind="gradient", paper="Selvaraju et al. 2017")(lambda m, x, t=None: x[:, 0])
    assert "toy" not in method_registry.names()


# ----------------------------------------------------------------------------------------- the command


def test_the_table_lists_every_method_with_its_kind_paper_and_report_place() -> None:
    from cnnlens.report.context import default_methods

    res = methods_cli()
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line for line in res.output.splitlines() if line and not line.startswith(" ")}
    defaults = default_methods()
    for m in registry.registered():
        row = rows[m.name]
        assert re.match(rf"{re.escape(m.name)} +{re.escape(m.label)} +{m.kind} +{re.escape(m.paper.cite)} +", row), row
        where = f"default {defaults.index(m.name) + 1}" if m.name in defaults else "--methods all"
        assert row.endswith(where), row
    assert f"{len(registry.names())} methods;" in res.output
    # each row's options: every keyword option with its default, and the commands' value where it differs
    lime = flat(res.output.split("\nlime ")[1].split("\nrise ")[0])
    assert "n_samples=1000 [commands: 300]" in lime and "kernel_width=0.25," in lime and "precision=float32" in lime


def test_json_round_trips_and_agrees_with_the_registry_and_the_runner() -> None:
    from cnnlens.report.context import default_methods

    res = methods_cli("--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["version"] == 1 and json.loads(json.dumps(doc)) == doc
    assert [d["name"] for d in doc["methods"]] == registry.names()
    for d in doc["methods"]:
        m = registry.get(d["name"])
        assert (d["label"], d["kind"], d["layer"], d["streamable"], d["style"], d["class_average"], d["contrastive"]) == \
            (m.label, m.kind, m.layer, m.streamable, m.style, m.class_average, m.contrastive)
        assert d["paper"] == {"authors": m.paper.authors, "year": m.paper.year, "title": m.paper.title,
                              "cite": m.paper.cite, "text": str(m.paper)}
        assert d["options"] == used_options(m.name, {})  # the signature's defaults, as index.json records them
        assert d["command_options"] == {k: v for k, v in m.options.items() if d["options"][k] != v}
        assert d["help"] == m.help and d["summary"]
        assert m.paper.year is None or re.split(r"[ ,&]", m.paper.authors)[0] in d["summary"]  # it names its paper
        assert d["report_default"] == (default_methods().index(m.name) + 1 if m.name in default_methods() else None)
        # the example runs this method with an option it takes, spelled as -o reads it
        assert d["example"].startswith(f"cnnlens explain RUN --methods {m.name} ")
        items = re.findall(r"-o (\S+)", d["example"])
        parsed = parse_options(items)
        assert check_options([m.name], parsed)[m.name], d["example"]
        for key, value in parsed[m.name].items():
            assert value == m.options.get(key, value)  # the commands' value where they set one
    assert {d["name"]: d["command_options"] for d in doc["methods"]}["occlusion"] == {"stride": 2, "fill": "mean"}


@pytest.mark.parametrize("kind", registry.KINDS)
def test_kind_filter(kind: str) -> None:
    doc = json.loads(methods_cli("--kind", kind, "--json").output)
    assert [d["name"] for d in doc["methods"]] == registry.names(kind=kind)
    rows = [line.split()[0] for line in methods_cli("--kind", kind).output.splitlines()
            if line and not line.startswith(" ")][1:-1]
    assert rows == registry.names(kind=kind)


def test_one_method_in_full() -> None:
    res = methods_cli("grad-cam")
    assert res.exit_code == 0, res.output
    text = flat(res.output)
    assert text.startswith("grad-cam: Grad-CAM (cam) paper Selvaraju et al. 2017, Grad-CAM: visual explanations from "
                           "deep networks via gradient-based localization summary Grad-CAM (Selvaraju et al. 2017)")
    assert "formula ``alpha_k = mean_ij d logit_t / d A_k[i,j]``" in text
    assert "call cnnlens.explain.grad_cam.grad_cam(model, images, target=None, **options): " + registry.get("grad-cam").help \
        in text
    assert "takes --layer" in text and "in the report's defaults (#4)" in text
    for key, value in used_options("grad-cam", {}).items():
        assert re.search(rf"^  {key} +{re.escape(json.dumps(value))}$", res.output, re.M), key
    assert "example cnnlens explain RUN --methods grad-cam -o grad-cam.relu=false --out OUT" in text
    lime = methods_cli("lime").output
    assert re.search(r"^  n_samples +1000  \[commands: 300\]$", lime, re.M)
    assert "example cnnlens explain RUN --methods lime -o lime.n_samples=300 --out OUT" in flat(lime)
    both = flat(methods_cli("rise", "feature-ablation").output)
    assert "rise: RISE (perturbation) paper Petsiuk, Das & Saenko 2018" in both
    assert "feature-ablation: Feature ablation (perturbation) paper cnnlens's own: Captum's FeatureAblation" in both
    assert "in the report with --methods all" in both


def test_unknown_names_and_bad_kinds_are_clear() -> None:
    res = CliRunner().invoke(main, ["methods", "gradcam"])
    assert res.exit_code == 2
    assert re.search(r"unknown method 'gradcam'; close names: grad-cam, [^(]*\(`cnnlens methods` lists all \d+\)",
                     flat(res.output)), res.output
    res = CliRunner().invoke(main, ["methods", "zzz"])
    assert res.exit_code == 2 and "unknown method 'zzz'; registered: " + ", ".join(registry.names()) in flat(res.output)
    res = CliRunner().invoke(main, ["methods", "--kind", "pixel"])
    assert res.exit_code == 2 and "kind must be one of gradient, cam, perturbation, got 'pixel'" in flat(res.output)
    res = CliRunner().invoke(main, ["methods", "saliency", "--kind", "cam"])
    assert res.exit_code == 2 and "give NAMEs or --kind, not both" in res.output


def test_a_method_of_ones_own_is_listed_too(method_registry: ModuleType) -> None:
    def toy(model: torch.nn.Module, images: torch.Tensor, target: object = None, *, scale: float = 2.0) -> torch.Tensor:
        """A toy: the first channel times ``scale``."""
        return images[:, 0] * scale

    method_registry.method("toy", "Toy", kind="gradient", options={"scale": 3.0})(toy)
    d = json.loads(methods_cli("toy", "--json").output)["methods"][0]
    assert (d["paper"], d["options"], d["command_options"], d["report_default"]) == (None, {"scale": 2.0}, {"scale": 3.0}, None)
    assert d["example"] == "cnnlens explain RUN --methods toy -o toy.scale=3.0 --out OUT"
    row = [line for line in methods_cli().output.splitlines() if line.startswith("toy ")]
    assert len(row) == 1 and re.match(r"toy +Toy +gradient +- +--methods all$", row[0])


def test_the_help_points_to_it() -> None:
    top = flat(CliRunner().invoke(main, ["--help"]).output)
    assert "cnnlens methods [NAME] (every explanation method: kind, paper, options)" in top
    assert re.search(r"\bmethods +List every explanation method", CliRunner().invoke(main, ["--help"]).output)
    assert "`cnnlens methods` shows each one's kind, paper and options" in flat(
        CliRunner().invoke(main, ["explain", "--help"]).output)


# ----------------------------------------------------------------------------------------- --methods all, end to end


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_cnn trained for one epoch on 35 synthetic faces at 16x16 (so every method runs in seconds)."""
    from cnnlens.data.synth import write_faces
    from cnnlens.train import TrainConfig, train

    root = tmp_path_factory.mktemp("all")
    write_faces(root / "faces", 35, seed=1)
    train(TrainConfig(data=f"synth:{root / 'faces'}", image_size=16, epochs=1, batch_size=16, val_fraction=0.4,
                      device="cpu", num_threads=1), root / "run", progress=False)
    return root / "run"


@pytest.mark.slow
def test_explain_methods_all_on_a_run_computes_every_method(small_run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["explain", str(small_run), "--methods", "all", "--images", "0,1", "--out",
                                    str(tmp_path / "ex"), "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "ex" / "index.json").read_text())
    assert index["methods"] == registry.names() and index["skipped"] == {}  # small_cnn: GAP head, ReLUs, BN
    assert set(index["options"]) == set(registry.names())
    assert "0x" not in json.dumps(index["options"])  # no memory address (VarGrad's partial) in the record
    with np.load(tmp_path / "ex" / "maps.npz") as z:
        for m in registry.names():
            maps = z[m]
            assert maps.shape == (2, 16, 16) and np.isfinite(maps).all(), m
            assert np.ptp(maps) > 0, m  # a real map, not a blank one


@pytest.mark.slow
def test_faithfulness_and_report_take_every_method(small_run: Path, tmp_path: Path) -> None:
    import csv

    from cnnlens.report.context import default_methods

    # the Score-CAM variants' fewest samples: each is 512 masked passes per sample and image on small_cnn
    res = CliRunner().invoke(main, ["faithfulness", str(small_run), "--methods", "all", "--metrics", "deletion",
                                    "--n-images", "3", "--n-perturbation-images", "2", "--n-randomization-images", "0",
                                    "-o", "ss-cam.n_samples=1", "-o", "is-cam.n_samples=1", "--device", "cpu"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with open(small_run / "faithfulness" / "faithfulness.csv", newline="") as f:
        scored = {row["method"] for row in csv.DictReader(f)}
    assert set(registry.names()) <= scored  # every registered method has its row in the table

    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", str(small_run), "--methods", "all", "--out", str(out), "--no-progress",
                                    "--device", "cpu", "--average-methods", "none", "--filter-layers", "none",
                                    "--feature-map-layers", "none"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    page = (out / "index.html").read_text()
    chooser = re.search(r'<select id="method-select">(.*?)</select>', page, re.S).group(1)
    offered = [(v, html.unescape(label)) for v, label in re.findall(r'<option value="([^"]+)">([^<]*)</option>', chooser)]
    assert offered == [("all", "All methods")] + [(m.name, m.label) for m in registry.registered()]
    faith = page.split('<section id="faithfulness"')[1].split("</section>")[0]
    assert all(html.escape(m.label) in faith for m in registry.registered())  # the table takes any of them
    assert json.loads((out / "data" / "report.json").read_text())["options"]["methods"] == registry.names()
    assert len(default_methods()) == 8 and set(default_methods()) < set(registry.names())  # the default stays eight


def test_a_partial_option_is_recorded_by_name_not_by_address() -> None:
    import functools

    from cnnlens.explain.runner import json_value
    from cnnlens.explain.saliency import saliency

    assert json_value(functools.partial(saliency, abs=False)) == "cnnlens.explain.saliency.saliency(abs=False)"
    assert used_options("vargrad", {})["method"] == "cnnlens.explain.saliency.saliency(abs=False)"  # VarGrad's default


def test_it_loads_the_registry_and_nothing_of_the_report() -> None:
    import subprocess

    code = ("import sys, io, contextlib; from cnnlens.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['methods', '--json'], standalone_mode=False)\n"
            "print(sorted(m for m in ('matplotlib', 'cnnlens.report', 'cnnlens.faithfulness', 'jinja2', 'scipy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("n_methods", [4, 36])
def test_the_deletion_figure_keeps_every_legend_entry_readable(n_methods: int) -> None:
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cnnlens.faithfulness import figures
    from cnnlens.faithfulness.deletion import CurveResult

    g = torch.Generator().manual_seed(0)

    def curve(mode: str) -> CurveResult:
        probs = torch.rand(3, 21, generator=g).sort(1, descending=mode == "deletion").values
        return CurveResult(mode, "blur", torch.linspace(0, 1, 21), probs, probs.mean(1), torch.zeros(3, dtype=torch.long))

    names = [f"method-{i}" for i in range(n_methods - 1)] + ["random-order"]
    curves = {m: {"deletion": curve("deletion"), "insertion": curve("insertion")} for m in names}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied because axes sizes collapsed to zero"
        fig = figures.curves_figure(curves)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
    renderer = canvas.get_renderer()
    page = fig.bbox
    for ax in fig.axes:
        box, leg = ax.get_window_extent(renderer), ax.get_legend()
        assert len(leg.get_texts()) == n_methods
        for text in leg.get_texts():  # every entry on the page
            t = text.get_window_extent(renderer)
            assert page.x0 <= t.x0 and t.x1 <= page.x1 and page.y0 <= t.y0 and t.y1 <= page.y1, text.get_text()
        lb = leg.get_window_extent(renderer)
        if n_methods <= figures.LEGEND_INSIDE:  # inside its axes
            assert box.x0 <= lb.x0 and lb.x1 <= box.x1 and box.y0 <= lb.y0 and lb.y1 <= box.y1
        else:  # below its axes and their tick labels, over none of the curves
            assert lb.y1 <= ax.xaxis.get_tightbbox(renderer).y0 and box.height > 100


def test_the_randomisation_figure_of_every_method_has_one_legend_below_its_panels() -> None:
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cnnlens.faithfulness import figures
    from cnnlens.faithfulness.randomization import RandomizationResult

    g = torch.Generator().manual_seed(0)
    names, layers = [f"method-{i}" for i in range(35)], ("fc", "block3.conv+block3.bn", "block1.conv+block1.bn")
    results = {mode: RandomizationResult(mode, layers, {m: torch.rand(3, 2, generator=g) for m in names},
                                         {m: torch.rand(3, 2, generator=g) for m in names}, {}, 0)
               for mode in ("cascading", "independent")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = figures.randomization_figure(results)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
    renderer = canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    texts = fig.legends[0].get_texts()
    assert [t.get_text() for t in texts] == [f"{m} (n=2)" for m in names]
    top = fig.legends[0].get_window_extent(renderer).y1
    assert all(top <= ax.xaxis.get_tightbbox(renderer).y0 and ax.get_window_extent(renderer).height > 100
               for ax in fig.axes)
    assert all(fig.bbox.y0 <= t.get_window_extent(renderer).y0 for t in texts)
