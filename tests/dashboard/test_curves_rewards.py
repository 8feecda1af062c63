"""The combined PPO reward's components (issue 14) appear on the Curves page as curves of their own."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
from streamlit.testing.v1 import AppTest

from .helpers import REPO, status, write_json, write_jsonl


def test_each_reward_component_gets_its_own_curve(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "ppo" / "rules"
    write_json(run / "status.json", status("ppo", "rules", "finished", 2))
    rows = [
        {
            "step": s,
            "time": float(s),
            "ppo/rm_score": 0.1 * s,
            "ppo/reward/preference": 0.1 * s,
            "ppo/reward/rule_banned_word": -0.5 / (s + 1),
            "ppo/reward/answer_is_correct": 0.2 * s,
            "ppo/reward_raw/answer_is_correct": 0.1 * s,
            "ppo/rule/banned_word": 0.3 / (s + 1),
        }
        for s in (0, 1)
    ]
    write_jsonl(run / "metrics.jsonl", rows)
    monkeypatch.setenv("LIT_RLHF_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=30)
    at.session_state["selected_runs"] = ["ppo/rules"]
    at.run()
    at.switch_page("pages/curves.py").run()
    assert not at.exception, [e.value for e in at.exception]
    keys = [t.value for t in at.text]
    components = [k for k in keys if k.startswith(("ppo/reward/", "ppo/reward_raw/", "ppo/rule/"))]
    assert sorted(components) == sorted(k for k in rows[0] if k.startswith("ppo/r") and k != "ppo/rm_score")
    charts = at.get("vega_lite_chart")
    frames = [pa.ipc.open_stream(c.proto.datasets[0].data.data).read_pandas() for c in charts]
    rule = frames[keys.index("ppo/reward/rule_banned_word")]
    assert isinstance(rule, pd.DataFrame) and rule["value"].tolist() == [-0.5, -0.25]
