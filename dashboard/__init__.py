"""The Streamlit dashboard: `app.py` (navigation), `pages/` (thin pages), `loaders.py` (pure file readers).

`loaders`, `ui` and `labeling` never import torch; only `modeling` (used by the Compare page) does.
"""
