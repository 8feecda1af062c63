"""Tests of the Streamlit dashboard (the repository's dashboard/ folder).

tests/ has no __init__.py, so pytest imports this folder as the top-level package `dashboard`: the name of
the app's own package, which it would shadow. Appending the app's folder to this package's search path makes
`dashboard.loaders`, `dashboard.ui` (and the pages' own `from dashboard import ...`) resolve to the app's
modules in the test process. Harmless if tests/ ever becomes a package (this is then `tests.dashboard`).
"""

from pathlib import Path

_APP = str(Path(__file__).resolve().parents[2] / "dashboard")
if __name__ == "dashboard" and _APP not in __path__:
    __path__.append(_APP)
