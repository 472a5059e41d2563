"""``cnnlens faithfulness``'s method and metric choices, without a run: the default is the report's methods
(``all`` stays available), ``--metrics`` names metric groups."""

from __future__ import annotations

from click.testing import CliRunner

from cnnlens.cli import main
from cnnlens.explain import registry
from cnnlens.faithfulness.runner import METRIC_GROUPS
from cnnlens.report.context import default_methods


def help_text() -> str:
    return "".join(CliRunner().invoke(main, ["faithfulness", "--help"]).output.split())


def test_methods_default_to_the_reports_and_all_stays() -> None:
    text = help_text()
    report = [m.name for m in sorted((m for m in registry.registered() if m.in_report is not None), key=lambda m: m.in_report)]
    assert list(default_methods()) == report and len(report) < len(registry.names())
    assert f"[default:{','.join(report)}]" in text
    assert "or'all'(everyregisteredmethod" in text
    assert "Comma-separatedmetricgroups(" + ",".join(METRIC_GROUPS) + ")or'all'" in text


def test_bad_metric_group_and_method_are_refused_before_any_work(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    res = CliRunner().invoke(main, ["faithfulness", str(tmp_path / "run"), "--metrics", "deletion,nope",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "unknown metric group 'nope'" in res.output and "deletion, localization" in res.output
    res = CliRunner().invoke(main, ["faithfulness", str(tmp_path / "run"), "--methods", "saliency,nope",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "unknown method" in res.output
    assert not (tmp_path / "out").exists()
