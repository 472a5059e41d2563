"""The generated benchmark doc keeps the sections measured apart from the run (docs/benchmarks-notes/):
a re-run of ``benchmarks/run.py`` must never drop a measurement written there by hand."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402


def test_notes_are_appended_in_name_order_and_named(tmp_path):
    (tmp_path / "b-second.md").write_text("## Second\n\nrow 2\n\n\n")
    (tmp_path / "a-first.md").write_text("## First\n\nrow 1")
    (tmp_path / "ignored.txt").write_text("not markdown")
    lines = report._notes(tmp_path)
    text = "\n".join(lines)
    assert text.index("## First") < text.index("## Second")
    assert "`a-first.md`, `b-second.md`" in text and "not markdown" not in text
    assert lines[-1] == "" and "row 2\n\n\n" not in text  # one blank line after each fragment, not its own tail


def test_no_notes_folder_adds_nothing(tmp_path):
    assert report._notes(tmp_path / "missing") == []
    assert report._notes(tmp_path) == []


def test_the_repository_notes_are_in_the_rendered_doc():
    """Every fragment in docs/benchmarks-notes/ shows up in docs/benchmarks.md (the doc was rendered after
    the fragment was written)."""
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    for fragment in sorted(report.NOTES.glob("*.md")):
        heading = fragment.read_text().splitlines()[0]
        assert heading.startswith("## ") and heading in doc, fragment.name


def test_partial_runs_are_listed_newest_first_by_their_recorded_date(tmp_path):
    import json
    import os

    def payload(date: str, method: str) -> str:
        return json.dumps({"date": date, "machine": {"device": "cpu"},
                           "results": [{"model": "small_cnn", "method": method, "summary": {"speedup_vs_best_peer": 2.0}}]})

    main = tmp_path / "cpu.json"
    main.write_text(payload("2026-12-03T00:00", "main"))
    (tmp_path / "cpu-old.json").write_text(payload("2026-11-01T10:00", "old"))
    (tmp_path / "cpu-new.json").write_text(payload("2026-12-02T10:00", "new"))
    (tmp_path / "cpu-other.json").write_text("[1, 2]")  # another script's results: skipped
    os.utime(tmp_path / "cpu-new.json", (1, 1))  # a fresh clone's mtimes say nothing about which run is newer
    rows = [r for r in report._partial_runs(json.loads(main.read_text()), main) if r.startswith("| cpu-")]
    assert [r.split("|")[4].strip() for r in rows] == ["new", "old"]
