"""Nothing lost (issue 16): every command that writes refuses an --out that would destroy an input or a
folder cnnlens did not write, says so in one clear line, and writes its folder whole, so a kill leaves
the old output or the new one, never a mix; what a kill leaves behind is cleaned by the next write.

The helper (`cnnlens._atomic.output_dir`) is tested directly; then every command with --out on a tiny
real run: --out = the run, its parent, a folder holding someone's file, and a place that cannot be
written; afterwards every input and foreign file is byte for byte as before.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from cnnlens import _atomic
from cnnlens._atomic import MARKER, CannotWrite, OutputRefused, check_output, output_dir, remove_stale
from cnnlens.cli import main
from cnnlens.models import MODELS

from test_train_loop import TINY, TinyNet, write_easy_faces

UNWRITABLE = Path("/sys/cnnlens-cannot-write-here")


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``roots``, with the bytes of each file: equal snapshots = nothing changed."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]):
            out[str(p)] = p.read_bytes() if p.is_file() else None
    return out


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


def dead_pid() -> int:
    """The PID of a process that has just exited, so no process has it."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------ the helper


def write(path: Path, kind: str = "evaluation", text: str = "new", **kwargs: object) -> None:
    with output_dir(path, kind=kind, **kwargs) as tmp:
        (tmp / "metrics.json").write_text(text)


def test_writes_whole_with_a_marker_and_replaces_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    write(out, text="old")
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "evaluation" and marker["files"] == ["metrics.json"] and marker["version"] == 1
    with pytest.raises(OutputRefused, match=r"already exists; pass --overwrite"):
        write(out)
    assert (out / "metrics.json").read_text() == "old"
    write(out, overwrite=True)
    assert (out / "metrics.json").read_text() == "new" and temps(tmp_path) == []
    with pytest.raises(OutputRefused, match="holds an evaluation, not a report"):  # another kind is never replaced
        write(out, kind="report", overwrite=True)


def test_folders_cnnlens_did_not_write_are_never_replaced(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("three years")
    with pytest.raises(OutputRefused, match="not written by cnnlens .* not even with --overwrite"):
        write(docs, overwrite=True)
    out = tmp_path / "eval"
    write(out)
    (out / "notes.txt").write_text("mine")  # a user's file dropped into a cnnlens output
    with pytest.raises(OutputRefused, match=r"also holds .*notes.txt, which cnnlens did not write"):
        write(out, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputRefused, match="exists and is not a folder"):
        write(tmp_path / "file", overwrite=True)
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(OutputRefused, match="is a symbolic link"):
        write(tmp_path / "link", overwrite=True)
    assert snapshot(docs) == {str(docs): None, str(docs / "thesis.txt"): b"three years"}
    assert (out / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()  # an empty folder may be used
    write(tmp_path / "empty")
    assert (tmp_path / "empty" / "metrics.json").read_text() == "new"


def test_never_a_folder_that_is_or_holds_an_input(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "fer"
    write(run, kind="run")
    before = snapshot(tmp_path)
    for out, words in ((run, "is the input"), (run.parent, "holds the input"), (tmp_path, "holds the input")):
        with pytest.raises(OutputRefused, match=words):
            write(out, kind="run", overwrite=True, inputs=[run])
    assert snapshot(tmp_path) == before
    write(run / "eval", inputs=[run])  # inside the input is fine: RUN/eval


def test_outputs_from_before_markers_are_recognised(tmp_path: Path) -> None:
    report = tmp_path / "report"
    (report / "data").mkdir(parents=True)
    (report / "index.html").write_text("<html>")
    (report / "data" / "report.json").write_text(json.dumps({"version": 1, "sections": ["data"]}))
    assert _atomic.output_kind(report) == "report"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"version": 1, "model": {}, "train": {}}))
    (run / "weights.safetensors").write_bytes(b"w")
    (run / "report").mkdir()  # an old report inside an old run is the run's too
    (run / "report" / "index.html").write_text("<html>")
    (run / "report" / "data").mkdir()
    (run / "report" / "data" / "report.json").write_text(json.dumps({"version": 1, "sections": []}))
    assert _atomic.output_kind(run) == "run" and _atomic.foreign_entries(run) == []
    (run / "report" / "mine.txt").write_text("x")  # no longer looks like something cnnlens wrote alone
    assert _atomic.output_kind(run) is None
    with pytest.raises(OutputRefused, match="not written by cnnlens"):
        check_output(run, kind="run", overwrite=True)
    with output_dir(report, kind="report", overwrite=True) as tmp:
        (tmp / "index.html").write_text("<new>")
    assert (report / "index.html").read_text() == "<new>" and not (report / "data").exists()


def test_a_failure_inside_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    write(out, text="old")
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="boom"):
        with output_dir(out, kind="evaluation", overwrite=True) as tmp:
            (tmp / "metrics.json").write_text("half")
            raise RuntimeError("boom")
    assert snapshot(out) == before and temps(tmp_path) == []


def test_a_full_disk_is_a_clear_error_and_the_old_folder_stays(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    write(out, text="old")
    with pytest.raises(CannotWrite, match=f"cannot write to {out}: No space left on device") as info:
        with output_dir(out, kind="evaluation", overwrite=True) as tmp:
            (tmp / "metrics.json").write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "metrics.json"))
    assert info.value.disk_full and (out / "metrics.json").read_text() == "old" and temps(tmp_path) == []


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys, a file system nobody can create files in")
def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CannotWrite, match=f"cannot write to {UNWRITABLE / 'eval'}: "):
        write(UNWRITABLE / "eval")
    with pytest.raises(CannotWrite, match="cannot write to .*metrics.json"):
        _atomic.write_text(UNWRITABLE / "metrics.json", "{}")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CannotWrite, match="cannot write to"):  # a parent that is a file
        write(tmp_path / "afile" / "eval")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CannotWrite, match="cannot write to .*: Permission denied"):
            write(locked / "eval")
    finally:
        locked.chmod(0o700)


def test_stale_temporaries_of_killed_processes_are_removed_by_the_next_write(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    pid = dead_pid()
    (tmp_path / f".eval.{pid}.abcd1234.tmp").mkdir()
    (tmp_path / f".eval.{pid}.abcd1234.tmp" / "metrics.json").write_text("half")
    (tmp_path / ".eval.zz9x8y7w.tmp").mkdir()  # the name before PIDs were in it
    (tmp_path / f".eval.{os.getpid()}.live1234.tmp").mkdir()  # a process that still runs: its own, left alone
    (tmp_path / f".other.{pid}.abcd1234.tmp").mkdir()  # another output's: not this write's business
    write(out)
    assert temps(tmp_path) == [f".eval.{os.getpid()}.live1234.tmp", f".other.{pid}.abcd1234.tmp"]
    file = tmp_path / "run" / "checkpoint.pt"
    file.parent.mkdir()
    (file.parent / f".checkpoint.pt.{pid}.q1w2e3r4.tmp").write_bytes(b"half a checkpoint")
    _atomic.write_bytes(file, b"whole")
    assert temps(file.parent) == [] and file.read_bytes() == b"whole"


def test_a_swap_killed_between_its_renames_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no atomic exchange exists, the old folder is moved aside before the new one moves in; a kill
    between the two leaves no folder at --out, and the next write puts the old one back before judging it."""
    out = tmp_path / "eval"
    write(out, text="old")
    pid = dead_pid()
    os.rename(out, tmp_path / f".eval.{pid}.abcd1234.old")  # what the kill left: the old folder aside ...
    (tmp_path / f".eval.{pid}.abcd1234.tmp").mkdir()  # ... and the new one complete, not yet moved in
    assert remove_stale(out) == [tmp_path / f".eval.{pid}.abcd1234.tmp"]
    assert (out / "metrics.json").read_text() == "old" and temps(tmp_path) == []
    monkeypatch.setattr(_atomic, "_exchange", lambda a, b: False)  # the two-rename path, whole
    write(out, overwrite=True)
    assert (out / "metrics.json").read_text() == "new" and temps(tmp_path) == []


# ----------------------------------------------------------------------------- kill -9 while writing

_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import cnnlens.evaluate.figures as figures
    from cnnlens.evaluate import Evaluation
    figures.png_bytes = lambda fig: b"png"  # no figure drawing: the loop spends its time writing and swapping
    figures.confusion_figure = figures.class_distribution_figure = lambda e: None
    labels = np.arange(12) % 3
    def evaluation(k):
        probs = np.full((12, 3), 0.1, dtype=np.float32)
        probs[np.arange(12), (labels + k) % 3] = 0.8
        return Evaluation.from_probabilities(probs, labels, ("A", "B", "C"))
    a, b = evaluation(0), evaluation(1)
    out = Path(sys.argv[1])
    a.save(out, overwrite=True)
    print("ready", flush=True)
    while True:
        b.save(out, overwrite=True)
        a.save(out, overwrite=True)
""")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != MARKER}


@pytest.mark.slow
def test_kill_9_while_saving_leaves_the_old_or_the_new_folder_never_a_mix(tmp_path: Path) -> None:
    import numpy as np

    import cnnlens.evaluate.figures as figures
    from cnnlens.evaluate import Evaluation

    out = tmp_path / "eval"
    states = []
    with pytest.MonkeyPatch.context() as mp:  # the same two evaluations as the writer, saved here
        mp.setattr(figures, "png_bytes", lambda fig: b"png")
        mp.setattr(figures, "confusion_figure", lambda e: None)
        mp.setattr(figures, "class_distribution_figure", lambda e: None)
        labels = np.arange(12) % 3
        for k in (0, 1):
            probs = np.full((12, 3), 0.1, dtype=np.float32)
            probs[np.arange(12), (labels + k) % 3] = 0.8
            Evaluation.from_probabilities(probs, labels, ("A", "B", "C")).save(tmp_path / f"ref{k}")
            states.append(_files(tmp_path / f"ref{k}"))
    assert states[0] != states[1] and states[0].keys() == states[1].keys()
    rng = random.Random(16)
    seen: set[int] = set()
    mid_write = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)  # a real kill -9 of a process in its write loop
        proc.wait()
        now = _files(out)
        assert now in states, sorted(now)  # whole: every file from the same evaluation
        seen.add(states.index(now))
        mid_write += bool(temps(tmp_path))  # killed while a new folder was being written
    assert mid_write >= 1  # (measured: 9 of 10 kills land mid-write; HEAD's save left 7 of 10 folders mixed)
    left = temps(tmp_path)
    Evaluation.load(out).save(out, overwrite=True)  # the next write there removes what the kills left
    assert temps(tmp_path) == [], left


# ------------------------------------------------------------------------ every command, on a real run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A real run of the tiny test net (one epoch, well under a second) beside its data (easy.csv), and
    synthetic faces (faces/); the model name is registered for the module's CLI calls."""
    MODELS[TINY] = TinyNet
    root = tmp_path_factory.mktemp("outputs")
    data = write_easy_faces(root / "easy.csv", n=60)
    from cnnlens.train import TrainConfig, train

    train(TrainConfig(data=f"fer:{data}", model=TINY, epochs=1, batch_size=16, lr=0.05, val_fraction=0.25,
                      num_threads=1, device="cpu"), root / "run", progress=False)
    from cnnlens.data.synth import write_faces

    write_faces(root / "faces", 28, seed=0)  # a data folder, for train's --out
    yield root
    MODELS.pop(TINY, None)


def foreign(root: Path) -> Path:
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "thesis.txt").write_text("three years of work")
    return docs


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


#: command -> its arguments before --out, given the tiny root (RUN = root/run, data = root/easy.csv).
COMMANDS = {
    "report": lambda r: ["report", r / "run", "--no-progress", "--device", "cpu"],
    "evaluate": lambda r: ["evaluate", r / "run", "--device", "cpu"],
    "faithfulness": lambda r: ["faithfulness", r / "run", "--methods", "saliency", "--n-images", "4", "--device", "cpu"],
    "explain": lambda r: ["explain", r / "run", "--methods", "saliency", "--images", "0", "--device", "cpu"],
    "train": lambda r: ["train", "--data", f"synth:{r / 'faces'}", "--model", TINY, "--epochs", "1", "--device", "cpu",
                        "--no-progress"],
    "data synth": lambda r: ["data", "synth", "--n", "14"],
    "demo": lambda r: ["demo", "--n-images", "70", "--epochs", "1", "--device", "cpu", "--no-progress"],
}
#: What --out the input means for each command (the run; for train its data; the others have none, and
#: are given the run), and what the refusal says.
INPUT = {"train": ("faces", "is the input"), "data synth": ("run", "holds a training run, not synthetic faces"),
         "demo": ("run", "holds a training run, not a demo")}
PARENT = {"data synth": "not written by cnnlens", "demo": "not written by cnnlens"}


@pytest.mark.parametrize("where", ["input", "parent", "foreign"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_no_command_replaces_its_input_or_someone_elses_folder(tiny: Path, name: str, where: str) -> None:
    docs = foreign(tiny)
    before = snapshot(tiny)
    given, input_words = INPUT.get(name, ("run", "is the input"))
    out, words = {"input": (tiny / given, input_words), "parent": (tiny, PARENT.get(name, "holds the input")),
                  "foreign": (docs, "not written by cnnlens")}[where]
    res = cli(*COMMANDS[name](tiny), "--out", out, "--overwrite")
    flat = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # a message, not a traceback
    assert f"Error: --out {out} " in flat and words in flat, flat
    assert snapshot(tiny) == before  # the run, its data, the thesis: byte for byte


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys, a file system nobody can create files in")
@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_unwritable_out_is_one_clear_line(tiny: Path, name: str) -> None:
    before = snapshot(tiny)
    res = cli(*COMMANDS[name](tiny), "--out", UNWRITABLE / "x")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"Error: cannot write to {UNWRITABLE / 'x'}" in " ".join(res.output.split()) and "Traceback" not in res.output
    assert snapshot(tiny) == before


def test_default_outputs_are_replaced_by_a_re_run_explicit_ones_need_overwrite(tiny: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlens.report.build as report_build

    monkeypatch.setattr(report_build, "SECTIONS", [])  # the page without its sections: the folder rules are the same
    run = tiny / "run"
    for _ in range(2):  # `cnnlens report RUN` twice: the earlier RUN/report is replaced, as before
        res = cli("report", run, "--no-progress", "--device", "cpu")
        assert res.exit_code == 0, res.output
    assert json.loads((run / "report" / MARKER).read_text())["kind"] == "report"
    site = tmp_path / "site"
    assert cli("report", run, "--out", site, "--no-progress", "--device", "cpu").exit_code == 0
    again = cli("report", run, "--out", site, "--no-progress", "--device", "cpu")
    assert again.exit_code == 1 and "already exists; pass --overwrite" in " ".join(again.output.split())
    assert cli("report", run, "--out", site, "--overwrite", "--no-progress", "--device", "cpu").exit_code == 0
    for _ in range(2):
        res = cli("evaluate", run, "--device", "cpu")
        assert res.exit_code == 0, res.output
    res = cli("evaluate", run, "--out", site, "--overwrite", "--device", "cpu")  # a report is not an evaluation
    assert res.exit_code == 1 and "holds a report, not an evaluation" in " ".join(res.output.split())
    (run / "report" / "notes.txt").write_text("mine")
    res = cli("report", run, "--no-progress", "--device", "cpu")
    assert res.exit_code == 1 and "notes.txt, which cnnlens did not write" in " ".join(res.output.split())
    assert (run / "report" / "notes.txt").read_text() == "mine"
    assert temps(run) == [] and temps(tmp_path) == []
    (run / "report" / "notes.txt").unlink()


def test_summary_of_a_folder_that_is_not_a_run_names_the_file(tiny: Path, tmp_path: Path) -> None:
    res = cli("summary", tmp_path)
    assert res.exit_code == 1 and "is not a cnnlens run folder: config.json is missing" in " ".join(res.output.split())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny / "run" / "config.json").read_text()[:40])  # truncated
    res = cli("summary", broken)
    assert res.exit_code == 1 and f"{broken / 'config.json'}: not valid JSON" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_explain_refuses_negative_image_indices(tiny: Path, tmp_path: Path) -> None:
    res = cli("explain", tiny / "run", "--methods", "saliency", "--images", "0,-1", "--out", tmp_path / "ex",
              "--device", "cpu")
    import re

    assert res.exit_code == 2 and re.search(r"image indices count from 0 \(the first image\) to \d+; got -1",
                                            " ".join(res.output.split())), res.output
    assert not (tmp_path / "ex").exists()


# ------------------------------------------------------------------------- training: disk, resume, weights


def _train(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["train", *map(str, args)])


FAST = ["--model", TINY, "--batch-size", "16", "--lr", "0.05", "--num-threads", "1", "--device", "cpu", "--no-progress",
        "--val-fraction", "0.25"]


@pytest.fixture
def easy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(MODELS, TINY, TinyNet)
    return f"fer:{write_easy_faces(tmp_path / 'easy.csv', n=60)}"


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_resume_continues(tmp_path: Path, easy: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlens.train import load_checkpoint
    from cnnlens.train import run as runfiles

    opened = []

    class FullDisk:
        """A file on a disk that fills up after 1000 bytes, as a full tmpfs behaves: real torch.save then
        fails with "[enforce fail at inline_container.cc] unexpected pos", which must not reach the user."""

        def __init__(self, fh: object) -> None:
            self.fh, self.written = fh, 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.fh.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self.fh, name)

        def __enter__(self) -> "FullDisk":
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

    def full_on_the_second(path: object, mode: str = "r") -> object:
        opened.append(path)
        fh = open(path, mode)  # noqa: SIM115
        return FullDisk(fh) if len(opened) == 2 else fh  # the second epoch's checkpoint

    monkeypatch.setattr(runfiles, "open", full_on_the_second, raising=False)
    out = tmp_path / "run"
    res = _train("--data", easy, "--out", out, "--epochs", "3", *FAST)
    ckpt = out / "checkpoint.pt"
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"disk full at {ckpt}, the previous checkpoint is intact" in " ".join(res.output.split())
    assert "enforce fail" not in res.output and len(opened) == 2
    assert load_checkpoint(ckpt)["epoch"] == 1 and temps(out) == []
    monkeypatch.delattr(runfiles, "open")
    res = _train("--out", out, "--resume", "--no-progress")
    assert res.exit_code == 0, res.output
    assert load_checkpoint(ckpt)["epoch"] == 3


def test_resume_refuses_a_config_json_edited_since_training(tmp_path: Path, easy: str) -> None:
    out = tmp_path / "run"
    assert _train("--data", easy, "--out", out, "--epochs", "3", *FAST).exit_code == 0
    config = out / "config.json"
    original = config.read_text()
    for field, value, words in (("lr", 0.5, "lr is 0.5 in config.json but the run was trained with 0.05"),
                                ("batch_size", 8, "batch_size is 8 in config.json but the run was trained with 16"),
                                ("epochs", 5, "epochs=5: it was trained with epochs=3 and the onecycle schedule")):
        doc = json.loads(original)
        doc["train"][field] = value
        config.write_text(json.dumps(doc))
        before = snapshot(out)
        res = _train("--out", out, "--resume", "--no-progress")
        assert res.exit_code == 1 and words in " ".join(res.output.split()), res.output
        assert snapshot(out) == before  # refused before anything was written
    config.write_text(original)
    res = _train("--out", out, "--resume", "--epochs", "5", "--no-progress")
    assert res.exit_code == 1 and "the onecycle schedule" in " ".join(res.output.split())


def test_more_epochs_extend_a_constant_schedule_run_exactly(tmp_path: Path, easy: str) -> None:
    from cnnlens.train import load_run

    const = [*FAST, "--schedule", "constant"]
    assert _train("--data", easy, "--out", tmp_path / "whole", "--epochs", "4", *const).exit_code == 0
    out = tmp_path / "extended"
    assert _train("--data", easy, "--out", out, "--epochs", "2", *const).exit_code == 0
    res = _train("--out", out, "--resume", "--epochs", "4", "--no-progress")
    assert res.exit_code == 0, res.output
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(load_run(out).history) == strip(load_run(tmp_path / "whole").history)  # as if asked for 4 at first
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 4  # the records say what ran
    assert "epochs changed from 2 to 4" in (out / "train.log").read_text()
    res = _train("--out", out, "--resume", "--epochs", "3", "--no-progress")
    assert res.exit_code == 1 and "4 epochs are already done" in res.output


def test_deleted_best_weights_say_what_is_lost_and_how_to_recover(tmp_path: Path, easy: str) -> None:
    from cnnlens.train import load_checkpoint, load_run

    out = tmp_path / "one"
    assert _train("--data", easy, "--out", out, "--epochs", "1", *FAST).exit_code == 0
    (out / "weights.safetensors").unlink()  # one epoch: the checkpoint's weights are the best, so they come back
    res = cli("summary", out)
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "weights.safetensors (the best epoch's weights) is missing" in flat
    assert f"cnnlens train --out {out} --resume` rebuilds it" in flat
    assert _train("--out", out, "--resume", "--no-progress").exit_code == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in load_run(out).model.state_dict().items())

    out = tmp_path / "four"
    assert _train("--data", easy, "--out", out, "--epochs", "4", *FAST).exit_code == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["best_epoch"] < ckpt["epoch"] == 4  # the best weights exist only in weights.safetensors
    (out / "weights.safetensors").unlink()
    before = snapshot(out)
    for res in (cli("summary", out), _train("--out", out, "--resume", "--no-progress")):
        flat = " ".join(res.output.split())
        assert res.exit_code == 1, res.output
        assert f"(epoch {ckpt['best_epoch']}'s weights) is missing" in flat and "Restore the file from a backup" in flat
        assert "--resume" not in flat and "already finished" not in flat
    assert snapshot(out) == before


def test_never_inside_an_input_folder_cnnlens_did_not_write(tmp_path: Path) -> None:
    photos = tmp_path / "photos"  # a user's image folder: a new subfolder there would become a class
    (photos / "happy").mkdir(parents=True)
    (photos / "happy" / "a.png").write_bytes(b"not really a png")
    run = tmp_path / "run"
    write(run, kind="run")
    before = snapshot(photos)
    with pytest.raises(OutputRefused, match="is inside the input folder .*which cnnlens did not write"):
        write(photos / "eval", inputs=[run, _atomic.DataInput(photos)])
    assert snapshot(photos) == before
    write(run / "eval", inputs=[run, _atomic.DataInput(photos)])  # inside the run: where outputs belong
    write(photos / "eval", inputs=[photos])  # a plain input (a RUN that is not one yet) is only never replaced


def test_evaluate_refuses_an_out_inside_its_folder_dataset(tiny: Path, tmp_path: Path) -> None:
    from PIL import Image

    classes = json.loads((tiny / "run" / "config.json").read_text())["classes"]
    photos = tmp_path / "photos"
    for i, name in enumerate(classes):
        (photos / name).mkdir(parents=True)
        Image.new("L", (48, 48), color=30 * i).save(photos / name / "face.png")
    before = snapshot(photos)
    res = cli("evaluate", tiny / "run", "--data", f"folder:{photos}", "--device", "cpu", "--out", photos / "eval")
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "is inside the input folder" in flat, flat
    assert snapshot(photos) == before
