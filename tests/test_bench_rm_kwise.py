"""bench/rm_kwise.py's argument checks: a child checks the one (K, layout) it measures, not the parent's list.

The benchmark itself is run by hand (bench/README.md); this needs no model.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def rm_kwise():
    sys.path.insert(0, str(BENCH))  # its sibling harness, as `python bench/rm_kwise.py` finds it
    spec = importlib.util.spec_from_file_location("bench_rm_kwise", BENCH / "rm_kwise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCH))


def test_child_checks_its_own_case(rm_kwise):
    # the parent was given --ks 4: its children get --one 4 LAYOUT but not --ks, whose default holds K=9
    child = ["--one", "4", "kwise", "--workdir", "w", "--row-out", "r", "--seqs-per-step", "8"]
    assert rm_kwise.parse_args(child).one == ["4", "kwise"]
    assert rm_kwise.parse_args(["--ks", "4", "--seqs-per-step", "8"]).ks == [4]


def test_parent_checks_every_case(rm_kwise, capsys):
    with pytest.raises(SystemExit):
        rm_kwise.parse_args(["--seqs-per-step", "8"])  # default K=9 does not divide 8
    assert "not a multiple of K=9" in capsys.readouterr().err
