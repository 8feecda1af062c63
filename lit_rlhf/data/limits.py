"""Limits on comparison data that a hostile or careless file could otherwise push past what training can take.

Lives here: the cap on responses per prompt (K) and the count of comparisons that contradict each other across
rows. A row that contradicts itself (`chosen == rejected`, one text ranked twice differently) is refused by the
row validator (`rows.validate_row`), so the dashboard cannot write one either.
Must not live here: tokenization and tensors (`comparisons.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from lit_rlhf.data.rows import Comparison, DataError, ReadReport, record_skip, split_source

logger = logging.getLogger(__name__)

# A prompt's K responses give K(K-1)/2 pairs, all scored in one batch: K = 4,000 made 4M pairs. 16 is the
# most `collect-comparisons` samples (InstructGPT used 4 to 9).
MAX_RESPONSES = 16


def cap_responses(
    rows: list[Comparison], report: ReadReport, max_responses: int, on_error: Literal["raise", "skip"]
) -> list[Comparison]:
    """`rows` without those holding more than `max_responses` responses: raised, or counted in `report`."""
    kept = []
    for row in rows:
        if row.k <= max_responses:
            kept.append(row)
            continue
        path, line = split_source(row.source)
        err = DataError(
            path,
            line,
            "responses",
            f"{row.k} responses is more than max_responses={max_responses} (pairs grow as K^2); "
            "raise the data module's max_responses to train on it",
        )
        if on_error == "raise":
            raise err
        record_skip(report, err)
    report.kept = len(kept)
    return kept


def contradicting_pairs(rows: Sequence[Comparison]) -> int:
    """How many (prompt, a, b) preferences are contradicted by another row preferring b to a.

    Labelers disagree, so these are counted and reported rather than refused; each contradicted pair is
    counted once however many rows repeat it.
    """
    preferred: set[tuple[str, str, str]] = set()
    for row in rows:
        for better, worse in row.pairs():
            preferred.add((row.prompt, row.responses[better], row.responses[worse]))
    return sum(1 for prompt, a, b in preferred if a < b and (prompt, b, a) in preferred)


def screen_comparisons(
    rows: list[Comparison], report: ReadReport, max_responses: int, on_error: Literal["raise", "skip"]
) -> list[Comparison]:
    """Apply the K cap, then log how many preferences other rows contradict (when any do)."""
    kept = cap_responses(rows, report, max_responses, on_error)
    conflicts = contradicting_pairs(kept)
    if conflicts:
        logger.warning(
            "%s: %d response pairs are ranked one way in one row and the other way in another "
            "(labeler disagreement); both rows are kept",
            report.path,
            conflicts,
        )
    return kept
