"""The dashboard over a runs root someone else wrote (issue 16): every page renders and names each bad file;
nothing outside the runs root is read or written; downloads cannot carry spreadsheet formulas."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import loaders

from .helpers import FORMULA, REPO, SECRET, build_hostile_runs

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
TITLES = {"pages/overoptimization.py": "Over-optimization", "pages/ranking_queue.py": "Ranking queue"}


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    root = build_hostile_runs(tmp_path / "runs", tmp_path / "outside")
    monkeypatch.setenv("LIT_RLHF_RUNS", str(root))
    return root


def _page(page: str, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page != PAGES[0]:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown(at: AppTest) -> str:
    """Every text, code block and expander label of the page, one string."""
    parts = [t.value for t in at.text] + [c.value for c in at.code]
    parts += [e.label for e in at.expander] + [m.value for m in at.markdown]
    return "\n".join(parts)


# ---- 5. one file must not take a page down -----------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_over_a_hostile_runs_root(hostile, page):
    at = _page(page)
    title = TITLES.get(page, page.split("/")[1].removesuffix(".py").capitalize())
    assert at.title[0].value == title
    assert SECRET not in _shown(at)  # the report linked to a private key is never read


def test_runs_page_names_every_bad_file(hostile):
    at = _page(PAGES[0])
    runs = at.dataframe[0].value
    assert {"sft/nested", "sft/fifo", "reward/folder", "ppo/linked"} <= set(runs["run"])
    shown = _shown(at)
    assert f"{hostile / 'sft' / 'nested' / 'status.json'}: cannot be read (nested too deeply)" in shown
    assert f"{hostile / 'sft' / 'fifo' / 'status.json'}: a FIFO (named pipe), not a regular file" in shown
    assert f"{hostile / 'reward' / 'folder' / 'metrics.jsonl'}: a folder, not a regular file" in shown
    assert f"{hostile / 'ppo' / 'linked'}: leads outside the runs root" in shown
    assert "win rate 0.61" in shown  # the newest report inside the root is the one shown


def test_rankings_and_samples_name_their_bad_files(hostile):
    folder = hostile / "reward" / "folder"
    assert f"{folder / 'rankings.jsonl'}: a folder, not a regular file" in _shown(_page(PAGES[2]))
    assert f"{folder / 'samples.jsonl'}: a FIFO (named pipe), not a regular file" in _shown(_page(PAGES[3]))


def test_compare_names_a_deeply_nested_manifest(hostile):
    at = _page(PAGES[4])
    assert (
        f"{hostile / 'sft' / 'deep' / 'stage' / 'manifest.json'}: cannot be read (nested too deeply)"
        in _shown(at)
    )


def test_curves_of_a_linked_run_read_nothing_outside(hostile):
    at = _page(PAGES[1], selected_runs=["ppo/linked", "sft/alpha"])
    assert f"{hostile / 'ppo' / 'linked' / 'metrics.jsonl'}: leads outside the runs root" in _shown(at)
    assert "ppo/kl" not in [t.value for t in at.text]  # its metrics (outside the root) are not drawn


# ---- 9. metric rows a chart cannot use are counted and shown ------------------------------------------------
def test_unusable_metric_rows_are_counted_with_their_lines(hostile):
    at = _page(PAGES[1], selected_runs=["sft/badmetrics"])
    (box,) = [e for e in at.expander if "metric rows" in e.label]
    assert box.label == "4 metric rows could not be read and were skipped"
    lines = at.code[0].value.splitlines()
    path = hostile / "sft" / "badmetrics" / "metrics.jsonl"
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "NaN is not valid JSON" in lines[0] and "key appears more than once" in lines[1]
    assert "got number 3.5" in lines[2] and "got boolean True" in lines[3]


# ---- 10. tables offered as CSV carry no formulas -------------------------------------------------------------
def test_table_cells_that_start_like_formulas_are_neutralised(hostile):
    at = _page(PAGES[3], selected_runs=["sft/badmetrics"])
    table = at.dataframe[0].value
    row = table[table["run"] == "sft/badmetrics"].iloc[0]
    assert row["completion"] == "'" + FORMULA and row["prompt"] == "'-1 + 2 ="
    at.selectbox[0].set_value("-1 + 2 =").run()
    assert FORMULA in [t.value for t in at.text]  # the full text below the tables is exact


def test_safe_cells_leaves_numbers_and_plain_text():
    import pandas as pd

    from dashboard.safety import safe_cells

    frame = pd.DataFrame({"t": ["=1+1", "+x", "-y", "@z", "\tq", "ok", None], "n": [-1.0, 2, 3, 4, 5, 6, 7]})
    out = safe_cells(frame)
    assert out["t"].tolist()[:6] == ["'=1+1", "'+x", "'-y", "'@z", "'\tq", "ok"] and pd.isna(out["t"][6])
    assert out["n"].tolist() == frame["n"].tolist()
    assert frame["t"][0] == "=1+1"  # the caller's frame is not changed


# ---- 3. writes only under the labels folder; the runs root cannot point anywhere ----------------------------
def test_the_comparisons_box_cannot_write_outside_the_labels_folder(hostile, tmp_path, monkeypatch):
    from dashboard.modeling import Completion

    completions = [Completion(f"m{i}", text, [text], [0.0], None) for i, text in enumerate(["a b", "b a"])]
    result = types.SimpleNamespace(
        prompt="p",
        reference="m0",
        completions=completions,
        scores=None,
        note=None,
        judged=None,
        judge_note=None,
    )
    at = _page(PAGES[4], compare_result=result)
    for bad in ("../escaped/x.jsonl", str(tmp_path / "outside" / "x.jsonl"), "sft/fifo/status.json"):
        at.text_input(key="compare_file").set_value(bad)
        at.button(key="compare_save").click().run()
        assert [e.value for e in at.error] == ["Not saved: the dashboard does not write there."], bad
    os.symlink(tmp_path / "outside", hostile / "out")  # a link inside the root leading out of it
    at.text_input(key="compare_file").set_value("out/x.jsonl")
    at.button(key="compare_save").click().run()
    assert [e.value for e in at.error] == ["Not saved: the dashboard does not write there."]
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "outside" / "x.jsonl").exists()
    at.text_input(key="compare_file").set_value("labels/mine.jsonl")
    at.number_input(key="compare_rank_0").set_value(1)
    at.number_input(key="compare_rank_1").set_value(0)
    at.button(key="compare_save").click().run()
    assert [s.value for s in at.success] == ["Saved."]
    assert (hostile / "labels" / "mine.jsonl").read_text().count("\n") == 1


def test_save_ranking_refuses_paths_that_leave_its_root(tmp_path):
    from dashboard.labeling import save_ranking
    from dashboard.safety import UnsafePath

    root = tmp_path / "labels"
    root.mkdir()
    for bad in ("../x.jsonl", "/etc/x.jsonl", "notes.txt", "", "."):
        with pytest.raises(UnsafePath):
            save_ranking(bad, "p", ["a", "b"], [0, 1], root=root)
    save_ranking("sub/ok.jsonl", "p", ["a", "b"], [0, 1], root=root)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["ok.jsonl"]


SHOW_CONFIG = """
import sys
from streamlit import config
config._main_script_path = sys.argv[1]
config.get_config_options(force_reparse=True)
print(config.get_option("server.address"), config.get_option("browser.gatherUsageStats"),
      config.get_option("server.enableXsrfProtection"))
"""


@pytest.mark.parametrize("cwd", ["repo", "elsewhere"])
def test_streamlit_run_from_any_folder_binds_loopback_without_usage_stats(cwd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    env["HOME"] = str(tmp_path)  # no ~/.streamlit/config.toml of the user's
    result = subprocess.run(
        [sys.executable, "-c", SHOW_CONFIG, APP],
        cwd=REPO if cwd == "repo" else tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["127.0.0.1", "False", "True"]


def test_the_two_streamlit_config_files_are_the_same():
    root_copy = (REPO / ".streamlit" / "config.toml").read_text()
    assert root_copy == (REPO / "dashboard" / ".streamlit" / "config.toml").read_text()
    assert 'address = "127.0.0.1"' in root_copy


def test_loaders_given_a_root_never_follow_links_out_of_it(hostile, tmp_path):
    assert loaders.read_jsonl(hostile / "ppo" / "linked" / "metrics.jsonl", hostile).rows == ()
    assert loaders.read_jsonl(hostile / "ppo" / "linked" / "metrics.jsonl").rows != ()  # without a root: read
    assert loaders.latest_report(hostile)[0] == str(hostile / "eval" / "final" / "report.md")
