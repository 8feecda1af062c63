"""Kept checkpoints: which points stay, the index, RUN@best names, and relative links from a kept directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_rlhf.checkpoint.kept import (
    Kept,
    KeptEntry,
    KeptError,
    best_of,
    read_index,
    resolve_stage_ref,
    select,
)
from lit_rlhf.checkpoint.manifest import link_for


def _e(step: int, score: float, metric: str = "judge_score") -> KeptEntry:
    return KeptEntry(f"step-{step:06d}", step, metric, score)


POINTS = [_e(24, 0.80), _e(49, 0.86), _e(74, 0.84), _e(99, 0.82)]


def test_select_keeps_the_best_then_the_newest():
    assert [e.step for e in select(POINTS, 1)] == [49]
    assert [e.step for e in select(POINTS, 2)] == [49, 99]
    assert [e.step for e in select(POINTS, 3)] == [49, 74, 99]
    assert [e.step for e in select(POINTS, 9)] == [24, 49, 74, 99]
    assert select(POINTS, 0) == []


def test_best_is_the_earliest_of_equal_scores_and_uses_the_newest_metric():
    assert best_of([_e(24, 0.9), _e(49, 0.9)]).step == 24
    # a judge added on resume: reward-model scores are not compared with judge scores
    assert best_of([_e(24, 5.0, "eval_rm_score"), _e(49, 0.7), _e(74, 0.6)]).step == 49


def _writer(written: list[Path]):
    def write(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text("{}")
        written.append(out)

    return write


def test_add_writes_kept_points_evicts_the_rest_and_marks_the_best(tmp_path):
    kept, written = Kept(tmp_path / "kept"), []
    for e in POINTS:
        best = kept.add(
            e.step, e.metric, e.score, {"judge_score": e.score, "eval_kl": 0.1}, 2, _writer(written)
        )
    assert best.name == "step-000049"
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [
        "index.json",
        "step-000049",
        "step-000099",
    ]
    entries, best_name = read_index(tmp_path / "kept" / "index.json")
    assert [e.step for e in entries] == [49, 99] and best_name == "step-000049"
    assert entries[0].metrics == {"judge_score": 0.86, "eval_kl": 0.1}
    # a worse point than the best with keep 1 is never written at all
    assert [p.name for p in written] == ["step-000024", "step-000049", "step-000074", "step-000099"]
    Kept(tmp_path / "kept").add(124, "judge_score", 0.5, {}, 1, _writer(written))
    assert written[-1].name == "step-000099" and not (tmp_path / "kept" / "step-000124").exists()


def test_a_step_evaluated_again_replaces_its_point_and_stray_folders_go(tmp_path):
    kept = Kept(tmp_path / "kept")
    kept.add(24, "judge_score", 0.8, {}, 3, _writer([]))
    (tmp_path / "kept" / "step-000999").mkdir()  # left by a run killed before its index was written
    kept.add(24, "judge_score", 0.7, {}, 3, _writer([]))
    assert [(e.step, e.score) for e in kept.entries()] == [(24, 0.7)]
    assert not (tmp_path / "kept" / "step-000999").exists()


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"name": "../../etc", "step": 1, "metric": "m", "score": 1.0, "metrics": {}}, "kept[0].name"),
        ({"name": "step-1", "step": "1", "metric": "m", "score": 1.0, "metrics": {}}, "kept[0].step"),
        (
            {"name": "step-1", "step": 1, "metric": "m", "score": 1.0, "metrics": {"x": "y"}},
            "kept[0].metrics",
        ),
        ("step-1", "kept[0]"),
    ],
)
def test_a_bad_index_row_names_the_file_and_field(tmp_path, row, field):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"format_version": 1, "best": None, "kept": [row]}))
    with pytest.raises(KeptError) as err:
        read_index(path)
    assert str(err.value).startswith(f"{path}: field '{field}")


def test_best_must_be_a_kept_point(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"best": "step-000002", "kept": []}))
    with pytest.raises(KeptError, match="field 'best': 'step-000002' is not among the kept points"):
        read_index(path)


def test_run_at_best_latest_and_step_resolve_to_kept_directories(tmp_path):
    run = tmp_path / "runs" / "ppo" / "demo"
    (run / "stage").mkdir(parents=True)
    (run / "stage" / "manifest.json").write_text("{}")
    kept = Kept(run / "kept")
    for e in POINTS[:3]:
        kept.add(e.step, e.metric, e.score, {}, 3, _writer([]))
    assert resolve_stage_ref(f"{run}@best") == str(run / "kept" / "step-000049")
    assert resolve_stage_ref(f"{run}/stage@best") == str(
        run / "kept" / "step-000049"
    )  # the final stage dir's run
    assert resolve_stage_ref(f"{run}@latest") == str(run / "kept" / "step-000074")
    assert (
        resolve_stage_ref(f"{run}@step-24")
        == resolve_stage_ref(f"{run}@24")
        == str(run / "kept" / "step-000024")
    )
    assert resolve_stage_ref(str(run / "stage")) == str(run / "stage")  # not a reference
    with pytest.raises(KeptError, match=r"keeps no step-99; kept: step-000024, step-000049, step-000074"):
        resolve_stage_ref(f"{run}@step-99")
    with pytest.raises(KeptError, match="lists no kept checkpoints"):
        resolve_stage_ref(f"{tmp_path}/runs/ppo/other@best")
    odd = tmp_path / "a@best"  # a real path that merely looks like a reference
    odd.mkdir()
    assert resolve_stage_ref(str(odd)) == str(odd)


def test_a_kept_directory_links_its_parent_relative_to_itself(tmp_path):
    root = tmp_path / "runs"
    assert link_for(root / "ppo" / "d" / "kept" / "step-000049", root / "sft" / "d" / "stage") == (
        "../../../../sft/d/stage"
    )
    assert link_for(root / "ppo" / "d" / "stage", root / "sft" / "d" / "stage") == "../../../sft/d/stage"
