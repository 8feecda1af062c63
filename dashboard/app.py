"""lit-rlhf dashboard entry point: `streamlit run dashboard/app.py` or `python main.py dashboard`.

Navigation only: the page list. Pages live in `pages/` (each draws the sidebar's runs-root input, see
`ui.sidebar_runs_root`), file reading in `loaders.py`; nothing here reads a run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the repository root that `dashboard` lives in.
_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

st.set_page_config(page_title="lit-rlhf", layout="wide")
pages = [
    st.Page("pages/runs.py", title="Runs", default=True),
    st.Page("pages/curves.py", title="Curves"),
    st.Page("pages/overoptimization.py", title="Over-optimization"),
    st.Page("pages/rankings.py", title="Rankings"),
    st.Page("pages/ranking_queue.py", title="Ranking queue"),
    st.Page("pages/samples.py", title="Samples"),
    st.Page("pages/compare.py", title="Compare"),
]
st.navigation(pages).run()
