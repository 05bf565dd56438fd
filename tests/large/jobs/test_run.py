"""jobs.run: the events a job reports, the inputs it collects, one process's sharded run, the rows it returns."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from mae.large.errors import ImageError
from mae.large.jobs.run import QUIET, Events, JobRun, collect_inputs, run_sharded
from tests.cli.conftest import write_image


def _recording() -> tuple[Events, dict[str, list]]:
    seen: dict[str, list] = {"note": [], "failure": [], "progress": [], "advance": [], "loaded": [], "result": []}

    @contextlib.contextmanager
    def progress(total: int, label: str):
        seen["progress"].append((total, label))
        yield lambda: seen["advance"].append(1)

    return Events(note=seen["note"].append, failure=seen["failure"].append, progress=progress,
                  loaded=seen["loaded"].append, result=seen["result"].append), seen


def test_the_default_events_do_nothing_and_quiet_keeps_only_results() -> None:
    QUIET.note("x")
    with QUIET.progress(3, "label") as advance:
        advance()
    events, seen = _recording()
    quiet = events.quiet()
    quiet.note("x")
    quiet.loaded(object())
    quiet.result({"row": 1})
    assert seen["note"] == [] and seen["loaded"] == [] and seen["result"] == [{"row": 1}]


def test_collect_inputs_notes_what_it_passed_over(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    first = write_image(folder / "a.png")
    write_image(folder / "sub" / "b.png")
    events, seen = _recording()
    paths, failures = collect_inputs([folder, first], "test", recursive=False, events=events)
    assert paths == [first] and failures == []
    assert any("1 sub-folder(s) were not walked (sub)" in n and "recursive=True" in n for n in seen["note"])
    assert any("given more than once" in n for n in seen["note"])


def test_collect_inputs_with_nothing_left_names_the_purpose(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "a.png")
    with pytest.raises(ImageError, match="no image to draw: .*recursive=True") as info:
        collect_inputs([tmp_path], "draw", recursive=False, events=QUIET)
    assert info.value.argument == "recursive"


def test_one_process_runs_every_item_in_order_with_progress_and_results() -> None:
    events, seen = _recording()
    run = run_sharded(list("abcde"), "cpu", label="letters", events=events,
                      setup=lambda ctx, ev: "state", work=lambda state, local, ctx, ev: (f"{state}:{x}" for x in local))
    assert run.results == [f"state:{x}" for x in "abcde"] and run.state == "state"
    assert not run.ctx.is_distributed
    assert seen["progress"] == [(5, "letters")] and len(seen["advance"]) == 5 and seen["result"] == run.results


def test_a_job_run_splits_its_rows() -> None:
    run = JobRun(rows=[{"image": "a", "output": "a.png"}, {"image": "b", "error": "unreadable"}], seconds=1.0, model=None)
    assert [r["image"] for r in run.ok] == ["a"] and [r["image"] for r in run.failed] == ["b"]
