"""dashboard.loaders: reading files still being written, metric shaping, EMA, rankings, samples, discovery."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard import loaders
from lit_rlhf import run_files

from .helpers import REPO, SFT_PROMPT, XSS_SCRIPT, write_json

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def test_loaders_never_import_torch():
    code = (
        "import sys; import dashboard.loaders, dashboard.ui, dashboard.labeling; "
        "heavy = [m for m in ('torch', 'transformers', 'lightning') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---- read_jsonl ------------------------------------------------------------------------------------------


def test_half_written_last_line_is_left_out_without_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n\n{"step": 2}\n{"step": 3, "sft/lo')
    read = loaders.read_jsonl(path)
    assert read.rows == ({"step": 1}, {"step": 2})
    assert read.lines == (1, 3)
    assert read.problems == ()
    assert read.partial_tail is True


def test_bad_complete_line_is_reported_with_file_and_line_and_skipped(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"step": 1}\nnot json\n{"step": NaN}\n{"step": 4}\n')
    read = loaders.read_jsonl(path)
    assert read.rows == ({"step": 1}, {"step": 4})
    assert read.lines == (1, 4)
    assert len(read.problems) == 2
    assert read.problems[0].startswith(f"{path}:2: invalid JSON")
    assert read.problems[1].startswith(f"{path}:3: field 'step': NaN is not valid JSON")
    assert read.partial_tail is False


def test_missing_file_reads_as_empty(tmp_path):
    assert loaders.read_jsonl(tmp_path / "nope.jsonl") == loaders.JsonlRows(str(tmp_path / "nope.jsonl"))
    assert loaders.file_key(tmp_path / "nope.jsonl") is None


def test_file_key_changes_when_a_row_is_appended(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n')
    before = loaders.file_key(path)
    with open(path, "ab") as f:
        f.write(b'{"step": 2}\n')
    after = loaders.file_key(path)
    assert before[0] == after[0] == str(path)
    assert (before[2], after[2]) == (12, 24)


# ---- metrics ---------------------------------------------------------------------------------------------


def test_metrics_frame_last_non_null_value_per_step_sorted_by_step():
    rows = [
        {"step": 20, "time": 1.0, "sft/loss": 1.0},
        {"step": 10, "time": 2.0, "sft/loss": 2.0, "sft/lr": 0.5},
        {"step": 20, "time": 3.0, "sft/loss": None, "sft/exact_match": True},
        {"step": 20, "time": 4.0, "sft/lr": 0.25, "note": "text"},
        {"time": 5.0, "sft/loss": 9.0},  # no step: not placeable on the x axis
    ]
    frame = loaders.metrics_frame(rows)
    assert frame.index.tolist() == [10, 20]
    assert list(frame.columns) == ["note", "sft/exact_match", "sft/loss", "sft/lr"]
    assert frame["sft/loss"].tolist() == [2.0, 1.0]
    assert frame["sft/lr"].tolist() == [0.5, 0.25]
    assert math.isnan(frame.loc[10, "sft/exact_match"]) and frame.loc[20, "sft/exact_match"] == 1.0
    assert frame["note"].isna().all()


def test_metrics_frame_of_nothing_is_empty():
    frame = loaders.metrics_frame([])
    assert frame.empty and frame.index.name == "step"


def test_group_by_prefix_orders_stages_first_and_puts_bare_keys_under_other():
    keys = ["ppo/kl", "sft/lr", "epoch", "reward/accuracy", "sft/loss", "custom/x", "ppo/kl"]
    assert loaders.group_by_prefix(keys) == {
        "sft": ["sft/loss", "sft/lr"],
        "reward": ["reward/accuracy"],
        "ppo": ["ppo/kl"],
        "custom": ["custom/x"],
        "other": ["epoch"],
    }
    assert list(loaders.group_by_prefix(keys)) == ["sft", "reward", "ppo", "custom", "other"]


def test_ema_by_hand():
    # s0 = 1; s1 = 0.5*1 + 0.5*3 = 2; gap stays a gap; s3 = 0.5*2 + 0.5*5 = 3.5
    assert loaders.ema([1.0, 3.0, None, 5.0], 0.5) == [1.0, 2.0, None, 3.5]
    # s1 = 0.9*10 + 0.1*0 = 9; s2 = 0.9*9 + 0.1*0 = 8.1
    assert loaders.ema([10.0, 0.0, 0.0], 0.9) == pytest.approx([10.0, 9.0, 8.1])
    assert loaders.ema([float("nan"), 4.0], 0.5) == [None, 4.0]


@pytest.mark.parametrize("weight", [-0.1, 1.0])
def test_ema_rejects_weights_outside_0_1(weight):
    with pytest.raises(ValueError, match="smoothing weight"):
        loaders.ema([1.0], weight)


@given(st.lists(finite, min_size=1, max_size=30))
def test_ema_weight_zero_is_identity(values):
    assert loaders.ema(values, 0.0) == values


@given(st.lists(finite, min_size=1, max_size=30), st.floats(min_value=0.0, max_value=0.99))
def test_ema_stays_within_the_range_seen_so_far(values, weight):
    for i, s in enumerate(loaders.ema(values, weight)):
        seen = values[: i + 1]
        assert min(seen) - 1e-6 <= s <= max(seen) + 1e-6


def test_overlay_is_long_form_and_smooths_each_run_separately():
    a = loaders.metrics_frame([{"step": 1, "m": 0.0}, {"step": 2, "m": 4.0}, {"step": 3, "x": 1.0}])
    b = loaders.metrics_frame([{"step": 5, "m": 8.0}, {"step": 7, "m": 0.0}])
    c = loaders.metrics_frame([{"step": 1, "other": 1.0}])
    out = loaders.overlay({"sft/a": a, "sft/b": b, "sft/c": c}, "m", weight=0.5)
    assert out["step"].tolist() == [1, 2, 5, 7]
    assert out["run"].tolist() == ["sft/a", "sft/a", "sft/b", "sft/b"]
    # a: 0, 0.5*0 + 0.5*4 = 2 (step 3 has no m and is dropped); b starts fresh: 8, 0.5*8 + 0 = 4
    assert out["value"].tolist() == [0.0, 2.0, 8.0, 4.0]
    assert loaders.overlay({"sft/c": c}, "m").empty


def test_metrics_long_and_last_values():
    frame = loaders.metrics_frame(
        [{"step": 1, "r/acc": 0.5}, {"step": 2, "r/tau": 0.1}, {"step": 3, "r/acc": 0.75, "r/tau": None}]
    )
    long = loaders.metrics_long(frame, ["r/acc", "r/tau", "r/missing"])
    assert long.to_dict("list") == {
        "step": [1, 3, 2],
        "metric": ["r/acc", "r/acc", "r/tau"],
        "value": [0.5, 0.75, 0.1],
    }
    assert loaders.last_values(frame, ["r/acc", "r/tau", "r/missing"]) == {
        "r/acc": 0.75,
        "r/tau": 0.1,
        "r/missing": None,
    }


# ---- runs ------------------------------------------------------------------------------------------------


def test_discover_runs_reads_status_and_parent_stage(runs_root):
    (runs_root / "sft" / ".alpha.tmp-1234").mkdir()  # an atomic-write temporary is not a run
    (runs_root / "sft" / "empty").mkdir()  # nor a folder with neither status nor metrics
    runs = loaders.discover_runs(runs_root)
    assert [r.id for r in runs] == ["sft/alpha", "reward/rm", "ppo/live"]
    assert [r.status for r in runs] == ["finished", "finished", "running"]
    assert [r.parent_stage for r in runs] == [None, "sft", "sft"]
    assert runs[2].step == 2
    assert runs[2].file("metrics.jsonl") == str(runs_root / "ppo" / "live" / "metrics.jsonl")


def test_unreadable_status_makes_an_unknown_run_with_the_problem(runs_root):
    (runs_root / "sft" / "alpha" / "status.json").write_text("{not json", encoding="utf-8")
    run = loaders.discover_runs(runs_root)[0]
    assert (run.status, run.step) == ("unknown", None)
    assert run.problem.startswith(f"{runs_root / 'sft' / 'alpha' / 'status.json'}: cannot be read")


def test_a_running_run_without_status_updates_for_15_minutes_is_marked_stale():
    run = loaders.Run("ppo", "x", "/r/ppo/x", "running", 5, None, None, 1000.0, None)
    assert loaders.shown_status(run, now=1000.0 + 15 * 60) == "running"
    assert loaders.shown_status(run, now=1000.0 + 15 * 60 + 1) == "running (no update for 15 min)"
    assert loaders.shown_status(run, now=1000.0 + 3600) == "running (no update for 60 min)"
    finished = loaders.Run("ppo", "x", "/r/ppo/x", "finished", 5, None, None, 1000.0, None)
    assert loaders.shown_status(finished, now=1e9) == "finished"


def test_parent_stage_from_the_path_when_the_parent_has_no_manifest():
    assert loaders.infer_parent_stage("/gone/runs/reward/rm/stage") == "reward"
    assert loaders.infer_parent_stage("/somewhere/else") is None
    assert loaders.infer_parent_stage(None) is None


def test_runs_table_last_step_and_key_metrics(runs_root):
    runs = loaders.discover_runs(runs_root)
    frames = {r.id: loaders.metrics_frame(loaders.read_jsonl(r.file(run_files.METRICS)).rows) for r in runs}
    table = loaders.runs_table(runs, frames).set_index("run")
    # ppo/live: status.json says step 2, metrics reached 4 (the half-written step-6 row does not count)
    assert table["step"].tolist() == [20, 30, 4]
    assert table.loc["reward/rm", "reward/loss"] == 0.4
    assert table.loc["reward/rm", "reward/val_accuracy"] == 0.75
    assert table.loc["reward/rm", "reward/val_kendall_tau"] == 0.2
    assert table.loc["sft/alpha", "sft/val_loss"] == 1.5
    assert table.loc["ppo/live", "ppo/reward_mean"] == 0.3
    assert table.loc["reward/rm", "parent_stage"] == "sft"


# ---- rankings --------------------------------------------------------------------------------------------


def test_rm_ranks_zero_is_the_highest_score_and_ties_share():
    assert loaders.rm_ranks([0.5, 0.9, 0.5]) == [1, 0, 1]
    assert loaders.rm_ranks([0.1, 0.9, 0.3]) == [2, 0, 1]


@given(st.lists(finite, min_size=1, max_size=8, unique=True))
def test_rm_ranks_of_distinct_scores_is_a_permutation(scores):
    assert sorted(loaders.rm_ranks(scores)) == list(range(len(scores)))


def test_ranking_table_sorts_by_disagreement(runs_root):
    rows, problems = loaders.parse_rankings(
        loaders.read_jsonl(runs_root / "reward" / "rm" / "rankings.jsonl")
    )
    assert problems == []
    table = loaders.ranking_table(rows)
    assert table["prompt"].tolist() == ["add 1 2 =", "count a a =", "copy a b =", "same ="]
    assert table["row"].tolist() == [1, 0, 2, 3]
    assert table["agreement"].tolist()[:3] == [0.0, 1.0, 1.0]
    assert math.isnan(table["kendall_tau"].iloc[3]) and math.isnan(table["agreement"].iloc[3])
    assert loaders.ranking_table(rows, step=30)["prompt"].tolist() == ["add 1 2 =", "copy a b =", "same ="]


def test_ranking_table_breaks_tau_ties_by_lower_agreement():
    def row(tau, correct, pairs, prompt):
        return loaders.RankingRow(1, prompt, ("a", "b"), (0, 1), (0.0, 1.0), tau, correct, pairs, "f:1")

    table = loaders.ranking_table([row(0.5, 3, 4, "p1"), row(0.5, 1, 4, "p2"), row(0.0, 2, 4, "p3")])
    assert table["prompt"].tolist() == ["p3", "p2", "p1"]


def test_ranking_detail_against_labeled_ranks(runs_root):
    rows, _ = loaders.parse_rankings(loaders.read_jsonl(runs_root / "reward" / "rm" / "rankings.jsonl"))
    detail = loaders.ranking_detail(rows[1])
    assert detail.to_dict("list") == {
        "labeled_rank": [0, 2, 1],
        "rm_score": [0.1, 0.9, 0.3],
        "rm_rank": [2, 0, 1],
        "agrees": [False, False, True],
        "response": ["3", XSS_SCRIPT, "4"],
    }


def test_bad_rankings_rows_are_reported_by_file_line_and_field(tmp_path):
    path = tmp_path / "rankings.jsonl"
    good = {"step": 1, "prompt": "p", "responses": ["a", "b"], "labeled_rank": [0, 1], "scores": [1, 0]}
    bad_scores = {**good, "scores": [1.0]}
    bad_ranks = {**good, "labeled_rank": [0, "1"]}
    path.write_text("\n".join(json.dumps(r) for r in (good, bad_scores, bad_ranks)) + "\n", encoding="utf-8")
    rows, problems = loaders.parse_rankings(loaders.read_jsonl(path))
    assert [r.source for r in rows] == [f"{path}:1"]
    assert rows[0].kendall_tau is None and rows[0].scores == (1.0, 0.0)
    assert problems == [
        f"{path}:2: field 'scores': expected 2 finite numbers (one per response)",
        f"{path}:3: field 'labeled_rank': expected 2 integer ranks (one per response)",
    ]


# ---- samples ---------------------------------------------------------------------------------------------


def _samples(runs_root):
    reads = {
        r.id: loaders.read_jsonl(r.file(run_files.SAMPLES))
        for r in loaders.discover_runs(runs_root)
        if r.stage != "reward"
    }
    return loaders.samples_frame(reads)


def test_samples_frame_columns_and_half_line(runs_root):
    frame, problems = _samples(runs_root)
    assert problems == []
    assert list(frame.columns) == list(loaders.SAMPLE_COLUMNS)
    assert frame["run"].tolist() == ["sft/alpha"] * 4 + ["ppo/live"]  # ppo's half-written row is left out
    assert frame.loc[4, "reward"] == 0.9 and frame.loc[4, "kl"] == 0.01
    assert frame.loc[2, "exact_match"] == 1.0


def test_filter_samples(runs_root):
    frame, _ = _samples(runs_root)
    assert loaders.filter_samples(frame, text="SCRIPT")["completion"].tolist() == [XSS_SCRIPT]
    assert len(loaders.filter_samples(frame, text="window.__xss")) == 2  # one completion, one prompt
    assert loaders.filter_samples(frame, text=".*")["completion"].tolist() == []  # not a regex
    assert loaders.filter_samples(frame, modes=["sampled", "rollout"])["mode"].tolist() == [
        "sampled",
        "rollout",
    ]
    assert loaders.filter_samples(frame, steps=(10, 10))["completion"].tolist() == ["c b"]
    assert loaders.filter_samples(frame, runs=["ppo/live"])["step"].tolist() == [4]
    assert len(loaders.filter_samples(frame)) == 5


def test_prompt_history_orders_by_step_then_run_then_mode(runs_root):
    frame, _ = _samples(runs_root)
    history = loaders.prompt_history(frame, SFT_PROMPT)
    assert list(zip(history["step"], history["run"], history["mode"], strict=True)) == [
        (4, "ppo/live", "rollout"),
        (10, "sft/alpha", "greedy"),
        (20, "sft/alpha", "greedy"),
        (20, "sft/alpha", "sampled"),
    ]


def test_exact_repeats_of_a_sample_are_kept_once(tmp_path):
    path = tmp_path / "samples.jsonl"
    row = {"step": 6, "prompt": "p", "completion": "c", "mode": "greedy", "score": 0.5}
    other = {**row, "completion": "d"}
    path.write_text("".join(json.dumps(r) + "\n" for r in (row, other, row)), encoding="utf-8")
    frame, _ = loaders.samples_frame({"sft/x": loaders.read_jsonl(path)})
    assert frame["completion"].tolist() == ["d", "c"]


def test_bad_sample_rows_are_problems_not_crashes(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(
        json.dumps({"step": 1, "prompt": "p", "completion": "c", "mode": "greedy"})
        + "\n"
        + json.dumps({"step": 2, "prompt": "p", "mode": "greedy"})
        + "\n",
        encoding="utf-8",
    )
    frame, problems = loaders.samples_frame({"sft/x": loaders.read_jsonl(path)})
    assert frame["step"].tolist() == [1]
    assert problems == [f"{path}:2: field 'completion': expected a string"]


def test_sample_heading():
    record = {"step": 3, "run": "ppo/a", "mode": "rollout", "reward": 0.5, "kl": float("nan"), "score": None}
    assert loaders.sample_heading(record) == "step 3 · ppo/a · rollout · reward 0.5"
    assert loaders.sample_heading({"step": 1, "run": "sft/b", "mode": "greedy"}) == "step 1 · sft/b · greedy"


def test_samples_frame_of_nothing_has_the_columns():
    frame, problems = loaders.samples_frame({})
    assert frame.empty and list(frame.columns) == list(loaders.SAMPLE_COLUMNS) and problems == []


# ---- stage directories and reports -----------------------------------------------------------------------


def test_find_stage_dirs(runs_root):
    write_json(runs_root / "ppo" / "live" / "stage" / "manifest.json", {"stage": "bogus"})
    (runs_root / "sft" / "beta" / "stage").mkdir(parents=True)
    (runs_root / "sft" / "beta" / "stage" / "manifest.json").write_text("[1]", encoding="utf-8")
    found, problems = loaders.find_stage_dirs(runs_root)
    assert [(d.label, d.stage, d.step) for d in found] == [
        ("reward/rm", "reward", 30),
        ("sft/alpha", "sft", 20),
    ]
    assert found[0].path == str(runs_root / "reward" / "rm" / "stage")
    assert found[0].parent == str(runs_root / "sft" / "alpha" / "stage")
    assert problems == [
        f"{runs_root / 'ppo' / 'live' / 'stage' / 'manifest.json'}: field 'stage': expected one of sft, reward, ppo",
        f"{runs_root / 'sft' / 'beta' / 'stage' / 'manifest.json'}: expected a JSON object",
    ]


def test_latest_report_is_the_newest(runs_root, tmp_path):
    older = runs_root / "eval" / "older" / "report.md"
    older.parent.mkdir()
    older.write_text("old", encoding="utf-8")
    os.utime(older, ns=(1, 1))
    path, text = loaders.latest_report(runs_root)
    assert path == str(runs_root / "eval" / "final" / "report.md")
    assert text.startswith("# Evaluation\n")
    assert loaders.latest_report(tmp_path / "nothing") is None


def test_runs_table_of_a_run_without_metrics(tmp_path):
    write_json(tmp_path / "sft" / "new" / "status.json", {"status": "running", "step": 0})
    runs = loaders.discover_runs(tmp_path)
    table = loaders.runs_table(runs, {})
    assert table.loc[0, "step"] == 0
    assert table.loc[0, "status"] == "running"
    assert pd.isna(table.loc[0, "sft/loss"])


# ---- alarms (PPO status.json) -------------------------------------------------------------------------------


def test_alarms_are_read_from_status_json_and_tabled(runs_root):
    from .helpers import ALARM

    runs = {run.id: run for run in loaders.discover_runs(runs_root)}
    live = runs["ppo/live"]
    assert live.alarms == (
        loaders.AlarmRecord("kl_high", 2, 4, 2, (("kl", 12.5), ("limit", 12.0)), ALARM["message"]),
    )
    table = loaders.alarms_table(list(runs.values()))
    assert table.to_dict("records") == [
        {
            "run": "ppo/live",
            "alarm": "kl_high",
            "first_step": 2,
            "step": 4,
            "count": 2,
            "numbers": "kl 12.5, limit 12",
            "message": ALARM["message"],
        }
    ]
    frames = {run.id: pd.DataFrame() for run in runs.values()}
    column = loaders.runs_table(list(runs.values()), frames)["alarms"]
    assert column.isna().tolist() == [True, True, False] and column.iloc[2] == "kl_high"


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        ({"alarms": {"name": "x"}}, "field 'alarms': expected an array of at most 64 objects"),
        ({"alarms": [{"name": "kl_high"}]}, "field 'alarms[0].message': expected a string"),
        (
            {"alarms": [{"name": "a", "message": "", "first_step": 1.5, "step": 1, "count": 1}]},
            "field 'alarms[0].first_step': expected an integer",
        ),
        (
            {
                "alarms": [
                    {"name": "a", "message": "", "first_step": 1, "step": 1, "count": 1, "values": {"k": "x"}}
                ]
            },
            "field 'alarms[0].values': expected an object of finite numbers",
        ),
        ({"stopped_by": "kl_high"}, "field 'stopped_by': expected an array of alarm names"),
    ],
)
def test_malformed_alarms_are_a_problem_naming_the_field(tmp_path, status, problem):
    write_json(tmp_path / "ppo" / "x" / "status.json", {"status": "finished", **status})
    (run,) = loaders.discover_runs(tmp_path)
    assert run.alarms == () and run.problem == f"{tmp_path / 'ppo' / 'x' / 'status.json'}: {problem}"


def test_a_run_stopped_by_an_alarm_says_so_in_its_status(tmp_path):
    write_json(tmp_path / "ppo" / "x" / "status.json", {"status": "finished", "stopped_by": ["kl_high"]})
    (run,) = loaders.discover_runs(tmp_path)
    assert loaders.shown_status(run, now=0.0) == "finished (stopped by kl_high)"


# ---- samples: filters, flags, per-token KL, diffs -------------------------------------------------------------

SAMPLE_ROWS = [
    {
        "step": 0,
        "prompt": "p",
        "completion": "a b c",
        "mode": "eval",
        "rm_score": 0.5,
        "score": 0.9,
        "banned": 0.0,
    },
    {
        "step": 9,
        "prompt": "p",
        "completion": "a x c d",
        "mode": "eval",
        "rm_score": 1.5,
        "score": 0.4,
        "banned": 1.0,
    },
    {
        "step": 9,
        "prompt": "q",
        "completion": "b a",
        "mode": "rollout",
        "reward": 2.5,
        "tokens": ["b", "a", "</s>"],
        "token_kl": [0.1, -0.2, 0.0],
        "rules": {"format": True, "banned word": False},
    },
]


def _sample_frame(tmp_path, rows=SAMPLE_ROWS):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return loaders.samples_frame({"ppo/x": loaders.read_jsonl(path)})


def test_samples_carry_length_flags_and_token_kl(tmp_path):
    frame, problems = _sample_frame(tmp_path)
    assert problems == []
    assert frame["length"].tolist() == [3, 4, 3]  # words, or tokens when the row has them
    assert frame["flags"].tolist() == [(), ("banned",), ("rule:format",)]
    assert frame.loc[2, "tokens"] == ("b", "a", "</s>") and frame.loc[2, "token_kl"] == (0.1, -0.2, 0.0)
    assert loaders.sample_reward(frame).tolist() == [0.5, 1.5, 2.5]


def test_sample_filters_by_reward_score_length_and_flags(tmp_path):
    frame, _ = _sample_frame(tmp_path)

    def completions(**kw):
        return loaders.filter_samples(frame, **kw)["completion"].tolist()

    assert completions(reward=(1.0, 3.0)) == ["a x c d", "b a"]
    assert completions(score=(0.5, 1.0)) == ["a b c"]  # the rollout has no judge score: a range drops it
    assert completions(length=(4, 4)) == ["a x c d"]
    assert completions(flags=["banned", "rule:format"]) == ["a x c d", "b a"]
    assert completions(flags=[]) == []


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"tokens": ["a"], "token_kl": [0.1, 0.2]}, "token_kl"),
        ({"tokens": "a", "token_kl": [0.1]}, "tokens"),
        ({"tokens": ["a"]}, "token_kl"),
    ],
)
def test_bad_token_kl_is_a_row_problem(tmp_path, row, field):
    frame, problems = _sample_frame(
        tmp_path, [{"step": 1, "prompt": "p", "completion": "a", "mode": "m", **row}]
    )
    assert frame.empty and problems[0].startswith(f"{tmp_path / 'samples.jsonl'}:1: field '{field}'")


def test_word_diff_by_hand():
    assert loaders.word_diff("a b c", "a x c d") == [
        ("=", "a"),
        ("-", "b"),
        ("+", "x"),
        ("=", "c"),
        ("+", "d"),
    ]
    assert loaders.word_diff("", "") == []


# ---- defaults: Compare's models, the Curves headline, the report table ------------------------------------------


def _manifests(root, with_ppo: bool = True):
    """sft/a (oldest), sft/b, reward/r from sft/a and, optionally, ppo/p from sft/a scored by reward/r (newest)."""
    stages = [
        ("sft", "a", {}),
        ("sft", "b", {}),
        ("reward", "r", {"parent": "../../../sft/a/stage", "relative_links": True}),
    ]
    if with_ppo:
        links = {"parent": "../../../sft/a/stage", "extra": {"reward_from": "../../../reward/r/stage"}}
        stages.append(("ppo", "p", {**links, "relative_links": True}))
    for i, (stage, name, extra) in enumerate(stages):
        path = root / stage / name / "stage" / "manifest.json"
        write_json(path, {"stage": stage, "step": i, **extra})
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))


def test_compare_defaults_to_the_newest_ppo_stage_its_sft_parent_and_its_reward_model(tmp_path):
    _manifests(tmp_path)
    found, _ = loaders.find_stage_dirs(tmp_path)
    d = loaders.compare_defaults(found)
    assert [x.label for x in d.chosen] == ["ppo/p", "sft/a"]
    assert (d.reference.label, d.reward.label) == ("sft/a", "reward/r")


def test_compare_defaults_without_ppo_never_pick_a_reward_stage_to_generate_with(tmp_path):
    _manifests(tmp_path, with_ppo=False)
    found, _ = loaders.find_stage_dirs(tmp_path)
    d = loaders.compare_defaults(found)
    assert [x.label for x in d.chosen] == ["sft/b", "sft/a"]
    assert d.reference.label == "sft/b" and d.reward is None  # reward/r was trained from sft/a, not sft/b
    assert loaders.compare_defaults([]) == loaders.CompareDefaults([], None, None)


def test_headline_keys_are_each_stages_key_curves_in_order():
    keys = ["ppo/win_rate_vs_sft", "sft/lr", "ppo/kl", "sft/loss", "reward/val_accuracy", "ppo/entropy"]
    assert loaders.headline_keys(keys) == ["sft/loss", "reward/val_accuracy", "ppo/kl", "ppo/win_rate_vs_sft"]


def test_report_table_from_report_json_and_its_notes(tmp_path):
    report = tmp_path / "eval" / "demo" / "report.md"
    report.parent.mkdir(parents=True)
    report.write_text("# md")
    table, notes = loaders.report_table(report, tmp_path)
    assert table is None and notes == []  # no report.json: the page shows the Markdown
    write_json(
        report.with_name("report.json"),
        {
            "checkpoints": {
                "runs/sft/demo/stage": {"stage": "sft", "step": 1600, "win_rate_vs_sft": 0.5, "kl": 0.0},
                "runs/ppo/demo/kept/step-000049": {
                    "stage": "ppo",
                    "step": 400,
                    "win_rate_vs_sft": 0.63,
                    "kl": None,
                },
            },
            "notes": ["pretrain_loss is null: no --pretrain", 3],
        },
    )
    table, notes = loaders.report_table(report, tmp_path)
    assert table.drop(columns=["kl"]).to_dict("list") == {
        "checkpoint": ["sft/demo", "kept/step-000049"],
        "stage": ["sft", "ppo"],
        "step": [1600, 400],
        "win_rate_vs_sft": [0.5, 0.63],
    }
    assert table["kl"].iloc[0] == 0.0 and table["kl"].isna().iloc[1]  # null: not measured
    assert notes == ["pretrain_loss is null: no --pretrain"]
    write_json(report.with_name("report.json"), {"checkpoints": ["x"]})
    assert loaders.report_table(report, tmp_path) == (
        None,
        [f"{report.with_name('report.json')}: field 'checkpoints': expected an object of objects"],
    )
