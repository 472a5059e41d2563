"""The Python route to a report (``write_report(ReportInputs(...))``) on a model cnnlens did not make:
the PyPI FER model's shape (tanh convolutions, ``x.view(-1, n)``, Linear layers with F.relu), with the
default methods, so no method may crash on it."""

from __future__ import annotations

from pathlib import Path

from zoo_models import build_view_tanh

from cnnlens.data.synth import write_faces
from cnnlens.data import load_dataset
from cnnlens.models.foreign import Scored
from cnnlens.report import ReportInputs, ReportOptions, write_report


def test_write_report_on_a_view_flatten_model_with_the_default_methods(tmp_path: Path) -> None:
    write_faces(tmp_path / "faces", 120, seed=3)
    faces = load_dataset(f"synth:{tmp_path / 'faces'}", "test")
    model = Scored(build_view_tanh(), mean=(0.5,), std=(0.25,))
    options = ReportOptions(progress=False, images_per_class=1, lime_samples=60, smoothgrad_samples=4, ig_steps=4,
                            average_images=2, filters_per_layer=2, am_steps=4)
    page = write_report(ReportInputs(model=model, dataset=faces, name="pypi FER net"), tmp_path / "report",
                        options=options)
    html = page.read_text()
    assert "ViewTanhNet" in html and "Scored" not in html
    for method in ("Saliency", "SmoothGrad", "Guided backprop", "Grad-CAM", "Integrated gradients", "Occlusion"):
        assert method in html, method
