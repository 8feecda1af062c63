"""Every dashboard page under streamlit.testing's AppTest against the hand-written run directory."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import loaders

from .helpers import REPO, SFT_PROMPT, XSS_IMG, XSS_SCRIPT, status, write_json, write_jsonl

APP = str(REPO / "dashboard" / "app.py")
PAGES = [
    "pages/runs.py",
    "pages/curves.py",
    "pages/rankings.py",
    "pages/samples.py",
    "pages/compare.py",
    "pages/overoptimization.py",
    "pages/ranking_queue.py",
]


def open_page(root, page: str, **state) -> AppTest:
    """The app with LIT_RLHF_RUNS=root, switched to `page`, run once (state seeded first)."""
    at = AppTest.from_file(APP, default_timeout=30)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page != PAGES[0]:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(autouse=True)
def _runs_env(monkeypatch, runs_root):
    monkeypatch.setenv("LIT_RLHF_RUNS", str(runs_root))


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def chart_frames(at: AppTest) -> list[pd.DataFrame]:
    """The data behind each vega-lite chart on the page."""
    charts = at.get("vega_lite_chart")
    return [pa.ipc.open_stream(c.proto.datasets[0].data.data).read_pandas() for c in charts]


def test_runs_page_lists_runs_and_shows_the_report_as_text(runs_root):
    at = open_page(runs_root, PAGES[0])
    table = at.dataframe[0].value
    assert table["run"].tolist() == ["sft/alpha", "reward/rm", "ppo/live"]
    assert table["status"].tolist() == ["finished", "finished", "running"]
    assert table["step"].tolist() == [20, 30, 4]
    assert at.sidebar.text_input[0].value == str(runs_root)
    report = at.code[-1].value
    assert "win rate 0.61" in report and XSS_IMG in report
    assert not at.markdown.values or all(XSS_IMG not in m for m in at.markdown.values)


def test_runs_selection_is_shared_with_curves(runs_root):
    at = open_page(runs_root, PAGES[0])
    at.multiselect[0].set_value(["reward/rm"]).run()
    assert at.session_state["selected_runs"] == ["reward/rm"]
    at.switch_page(PAGES[1]).run()
    assert at.multiselect[0].value == ["reward/rm"]
    assert [s.value for s in at.subheader] == ["Headline", "reward/"]


def test_curves_overlay_runs_by_prefix_and_smoothing_changes_the_lines(runs_root):
    at = open_page(runs_root, PAGES[1], selected_runs=["sft/alpha", "ppo/live"])
    assert [s.value for s in at.subheader] == ["Headline", "sft/", "ppo/", "other"]
    keys = texts(at)
    headline = [
        "sft/loss",
        "sft/val_loss",
        "sft/exact_match",
        "ppo/reward_mean",
        "ppo/kl",
    ]  # each stage's first
    assert keys[: len(headline)] == headline
    keys = keys[len(headline) :]
    charts = chart_frames(at)[len(headline) :]
    assert keys == [
        "sft/exact_match",
        "sft/loss",
        "sft/lr",
        "sft/val_loss",
        "ppo/kl",
        "ppo/kl_coef",
        "ppo/reward_mean",
        "epoch",
    ]
    loss = charts[keys.index("sft/loss")]
    assert loss.to_dict("list") == {"step": [10, 20], "run": ["sft/alpha"] * 2, "value": [2.0, 1.0]}
    assert chart_frames(at)[0].equals(loss)  # the headline's sft/loss is the same curve
    at.slider[0].set_value(0.5).run()
    smoothed = chart_frames(at)[len(headline) + keys.index("sft/loss")]
    assert smoothed["value"].tolist() == [2.0, 1.5]  # 0.5 * 2 + 0.5 * 1


def test_curves_follow_toggle_is_enabled_only_with_a_running_run(runs_root):
    at = open_page(runs_root, PAGES[1], selected_runs=["sft/alpha"])
    assert at.toggle[0].disabled
    at = open_page(runs_root, PAGES[1], selected_runs=["ppo/live"])
    assert not at.toggle[0].disabled
    at.toggle[0].set_value(True).run()
    assert not at.exception


def test_curves_sees_rows_appended_since_the_last_rerun(runs_root):
    at = open_page(runs_root, PAGES[1], selected_runs=["ppo/live"])
    before = chart_frames(at)[texts(at).index("ppo/reward_mean")]
    with open(runs_root / "ppo" / "live" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('ard_mean": 0.5}\n')  # completes the half-written step-6 row
    at.button[0].click().run()
    after = chart_frames(at)[texts(at).index("ppo/reward_mean")]
    assert (before["step"].tolist(), after["step"].tolist()) == ([2, 4], [2, 4, 6])
    assert after["value"].tolist() == [0.1, 0.3, 0.5]


def test_rankings_page_worst_prompt_first_with_responses_as_text(runs_root):
    at = open_page(runs_root, PAGES[2])
    table = at.dataframe[0].value
    assert table["prompt"].tolist() == ["add 1 2 =", "copy a b =", "same ="]  # latest step, 30
    assert at.code[0].value == "add 1 2 ="
    assert [c.value for c in at.code[1:]] == ["3", "4", XSS_SCRIPT]  # by labeled rank
    detail = at.dataframe[1].value
    assert detail["rm_rank"].tolist() == [2, 0, 1]
    accuracy = chart_frames(at)[0]
    assert sorted(set(accuracy["metric"])) == [
        "reward/accuracy",
        "reward/val_accuracy",
        "reward/val_kendall_tau",
    ]
    at.number_input[0].set_value(2).run()
    assert at.code[0].value == "copy a b ="
    at.select_slider[0].set_value(20).run()
    assert at.dataframe[0].value["prompt"].tolist() == ["count a a ="]


def test_samples_page_shows_payloads_as_text_and_filters(runs_root):
    at = open_page(runs_root, PAGES[3])
    assert texts(at)[0] == "5 of 5 samples"
    assert at.selectbox[0].value == SFT_PROMPT
    assert XSS_SCRIPT in texts(at)
    assert "step 20 · sft/alpha · greedy · score 0.5" in texts(at)
    at.text_input[0].set_value("onerror").run()
    assert texts(at)[0] == "1 of 5 samples"
    assert at.selectbox[0].value == XSS_IMG
    assert texts(at)[-1] == "x y"
    at.text_input[0].set_value("").run()
    at.multiselect[1].set_value(["rollout"]).run()
    assert at.dataframe[0].value["completion"].tolist() == ["a b c"]


def test_compare_page_lists_stage_dirs_and_needs_two(runs_root):
    at = open_page(runs_root, PAGES[4])
    assert at.multiselect[0].options == ["reward/rm  [reward, step 30]", "sft/alpha  [sft, step 20]"]
    assert at.button[0].disabled  # no prompt yet
    assert "Choose at least two stage directories and type a prompt." in texts(at)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_what_to_do_without_runs(page, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_RLHF_RUNS", str(tmp_path / "empty"))
    at = open_page(tmp_path, page)
    shown = [c.value for c in at.code] + [i.value for i in at.info]
    assert any(loaders.FIRST_RUN_COMMAND in s or "reward" in s for s in shown)


def test_pages_other_than_compare_never_import_torch(runs_root):
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({APP!r}, default_timeout=60).run()
for page in {[p for p in PAGES[1:] if p != "pages/compare.py"]!r}:
    at.switch_page(page).run()
    assert not at.exception, page
heavy = [m for m in ("torch", "transformers", "lightning") if m in sys.modules]
assert not heavy, heavy
"""
    env = {**os.environ, "LIT_RLHF_RUNS": str(runs_root), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_sidebar_runs_root_switches_folders(runs_root, tmp_path):
    at = open_page(runs_root, PAGES[0])
    at.sidebar.text_input[0].set_value(
        str(runs_root / "elsewhere")
    ).run()  # a folder inside the start-up root
    assert [c.value for c in at.code] == [loaders.FIRST_RUN_COMMAND]
    assert texts(at)[-1].startswith(f"Runs root: {runs_root / 'elsewhere'}")
    at.sidebar.text_input[0].set_value(str(runs_root)).run()
    assert at.dataframe[0].value["run"].tolist() == ["sft/alpha", "reward/rm", "ppo/live"]


def test_the_sidebar_runs_root_cannot_leave_the_start_up_root(runs_root, tmp_path):
    from .helpers import build_runs

    build_runs(tmp_path / "private")  # runs a user did not start the dashboard on
    at = open_page(runs_root, PAGES[0])
    at.sidebar.text_input[0].set_value(str(tmp_path / "private")).run()
    assert not at.exception
    assert "is not inside the runs root this dashboard was started with" in at.sidebar.text[0].value
    assert set(at.dataframe[0].value["run"]) == {"sft/alpha", "reward/rm", "ppo/live"}
    assert all(str(tmp_path / "private") not in c.value for c in at.code)  # nothing from there is shown


def test_curves_metric_choice_follows_the_runs_chosen(runs_root):
    write_json(runs_root / "sft" / "beta" / "status.json", status("sft", "beta", "finished", 2))
    write_jsonl(runs_root / "sft" / "beta" / "metrics.jsonl", [{"step": 1, "sft/extra": 1.0}])
    at = open_page(runs_root, PAGES[1], selected_runs=["sft/alpha", "sft/beta"])
    headline = ["sft/loss", "sft/val_loss", "sft/exact_match"]
    at.multiselect[1].set_value(["sft/loss"]).run()
    assert texts(at) == [*headline, "sft/loss", "epoch"]
    at.multiselect[0].set_value(["sft/beta"]).run()  # a different set of sft metrics: all shown again
    assert texts(at) == ["sft/extra"]  # and no headline metric among them


def test_runs_page_shows_the_report_figure_next_to_its_text(runs_root):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
    assert len(open_page(runs_root, PAGES[0]).get("image")) == 0
    (runs_root / "eval" / "final" / "report.png").write_bytes(base64.b64decode(png))
    assert len(open_page(runs_root, PAGES[0]).get("image")) == 1


def test_runs_page_lists_alarms_as_text(runs_root):
    at = open_page(runs_root, PAGES[0])
    assert "Alarms" in [s.value for s in at.subheader]
    alarms = at.dataframe[1].value
    assert alarms[["run", "alarm", "first_step", "step", "count"]].values.tolist() == [
        ["ppo/live", "kl_high", 2, 4, 2]
    ]
    assert XSS_IMG in alarms["message"].iloc[0]  # shown as table text


def test_samples_page_colours_token_kl_filters_flags_and_diffs_a_prompt(runs_root):
    from .test_loaders import SAMPLE_ROWS

    write_jsonl(runs_root / "ppo" / "samp" / "samples.jsonl", SAMPLE_ROWS)
    write_json(runs_root / "ppo" / "samp" / "status.json", status("ppo", "samp", "finished", 9))
    at = open_page(runs_root, PAGES[3])
    at.multiselect[0].set_value(["ppo/samp"]).run()
    assert at.selectbox[0].value == "p"
    assert at.code[-1].value == "  a\n- b\n+ x\n  c\n+ d"  # step 0 -> step 9
    at.selectbox[0].set_value("q").run()
    (kl,) = chart_frames(at)
    assert kl["token"].tolist() == ["b", "a", "</s>"] and kl["kl"].tolist() == [0.1, -0.2, 0.0]
    flags = [m for m in at.multiselect if m.label == "Breaks (any of)"][0]
    assert flags.options == ["banned", "rule:format"]
    flags.set_value(["banned"]).run()
    assert "1 of 8 samples" in texts(at)


def test_runs_page_shows_the_latest_report_as_a_table_with_the_markdown_folded(runs_root):
    write_json(
        runs_root / "eval" / "final" / "report.json",
        {
            "checkpoints": {"runs/ppo/demo/stage": {"stage": "ppo", "win_rate_vs_sft": 0.61}},
            "notes": ["a note"],
        },
    )
    at = open_page(runs_root, PAGES[0])
    report = at.dataframe[-1].value
    assert report.to_dict("list") == {"checkpoint": ["ppo/demo"], "stage": ["ppo"], "win_rate_vs_sft": [0.61]}
    assert "Note: a note" in texts(at)
    assert [e.label for e in at.expander] == ["report.md"] and XSS_IMG in at.code[-1].value


def test_compare_opens_on_the_newest_ppo_stage_against_its_sft_parent_scored_by_its_reward_model(
    tmp_path, monkeypatch
):
    from .test_loaders import _manifests

    _manifests(tmp_path)
    monkeypatch.setenv("LIT_RLHF_RUNS", str(tmp_path))
    at = open_page(tmp_path, PAGES[4])
    assert [d.label for d in at.multiselect[0].value] == ["ppo/p", "sft/a"]
    assert at.selectbox[0].label == "KL reference" and at.selectbox[0].value.label == "sft/a"
    assert at.selectbox[1].value.label == "reward/r"
