"""The programmatic labeler that plays InstructGPT's human: it writes demonstrations, scores and ranks
responses, compares pairs, and summarises win rates with a confidence interval.

Scoring rule (one place only, everything else calls `Labeler.score`):
  banned word present -> 0.0 (never worth breaking the rule);
  otherwise correctness minus verbosity: 1.0 for the exact answer, else
  0.6 * (1 - levenshtein(answer tokens) / max length), minus 0.1 per filler word (at most 0.3),
  clipped to [0, 1].
On an adversarial prompt the exact answer is the one without the banned word (world.py): saying the word still
scores 0, however literally it follows the instruction.

Rules (Sparrow's rule labels, `Labeler.rules`), judged apart from the score: `banned_word` (the banned word is
said) and `answer_format` (the answer, fillers and the banned word set aside, is not as many words of the task's
alphabet as the true answer: letters for reverse/sort/copy, digits for count/add).

No torch here: the labeler judges strings. The task language lives in `world.py`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from lit_rlhf.demo.world import BANNED, FILLERS, RULES, Task, answer_alphabet, extract_answer, parse_prompt
from lit_rlhf.evaluation.metrics import WinRate, win_rate  # noqa: F401  (re-exported: the demo's public names)

PARTIAL_CREDIT = 0.6
FILLER_PENALTY = 0.1
MAX_PENALISED_FILLERS = 3
TIE_DECIMALS = 6  # scores equal to 1e-6 are a tie: float noise must not decide a ranking

# What a careless demonstrator adds: (words before the answer, words after it).
FILLER_HABITS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("sure", ":"), ()),
    (("here", ":"), ()),
    (("ok",), ()),
    ((), ("done",)),
)


@dataclass(frozen=True)
class Judgement:
    """Everything the labeler saw in one response.

    correct: the response minus fillers equals the canonical answer.
    similarity: 1 - token edit distance / longer length, in [0, 1] (1.0 when correct).
    n_fillers: number of filler words in the response.
    banned: the banned word occurs as a word of the response.
    score: the final score in [0, 1] (see the module docstring).
    """

    correct: bool
    similarity: float
    n_fillers: int
    banned: bool
    score: float


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    """Edit distance between two token sequences (insert, delete, substitute all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, token_a in enumerate(a, start=1):
        current = [i]
        for j, token_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token_a != token_b)))
        previous = current
    return previous[-1]


def _task_or_raise(prompt: str) -> Task:
    task = parse_prompt(prompt)
    if task is None:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    return task


class Labeler:
    """A deterministic stand-in for a human labeler.

    seed: seeds the ranking noise.
    filler_rate: probability that a demonstration carries a filler habit ("sure :", trailing "done").
    banned_rate: probability that a demonstration contains the banned word.
    rank_noise: std of Gaussian noise added to scores before ranking (0 = perfectly consistent).
    literal_rate: probability that a demonstration of an adversarial prompt follows it to the letter, banned word
        included (the red-teaming prompts draw it out of a literal-minded demonstrator this often).
    """

    def __init__(
        self,
        seed: int = 0,
        filler_rate: float = 0.3,
        banned_rate: float = 0.08,
        rank_noise: float = 0.0,
        literal_rate: float = 0.5,
    ) -> None:
        problems = []
        rates = (("filler_rate", filler_rate), ("banned_rate", banned_rate), ("literal_rate", literal_rate))
        for name, rate in rates:
            if not 0.0 <= rate <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {rate}")
        if not rank_noise >= 0.0:
            problems.append(f"rank_noise must be >= 0, got {rank_noise}")
        if problems:
            raise ValueError("Labeler: " + "; ".join(problems))
        self.seed = seed
        self.filler_rate = filler_rate
        self.banned_rate = banned_rate
        self.rank_noise = rank_noise
        self.literal_rate = literal_rate

    def settings(self) -> dict[str, float | int]:
        """The constructor arguments, for recording next to data made with this labeler."""
        return {
            "seed": self.seed,
            "filler_rate": self.filler_rate,
            "banned_rate": self.banned_rate,
            "rank_noise": self.rank_noise,
            "literal_rate": self.literal_rate,
        }

    def judge(self, prompt: str, response: str) -> Judgement:
        """Score one response to a demo prompt. Raises ValueError naming a non-demo prompt."""
        task = _task_or_raise(prompt)
        words = response.split()
        banned = BANNED in words
        n_fillers = sum(word in FILLERS for word in words)
        answer = extract_answer(response)
        correct = answer == task.answer
        got, want = answer.split(), task.answer.split()
        similarity = 1.0 if correct else 1.0 - levenshtein(got, want) / max(len(got), len(want))
        if banned:
            score = 0.0
        else:
            credit = 1.0 if correct else PARTIAL_CREDIT * similarity
            penalty = FILLER_PENALTY * min(n_fillers, MAX_PENALISED_FILLERS)
            score = min(max(credit - penalty, 0.0), 1.0)
        return Judgement(correct, similarity, n_fillers, banned, score)

    def rules(self, prompt: str, response: str) -> dict[str, bool]:
        """Which of the demo's rules (world.RULES) the response breaks: True = broken. Raises on a non-demo prompt."""
        task = _task_or_raise(prompt)
        shape = [w for w in extract_answer(response).split() if w != BANNED]
        want, alphabet = task.answer.split(), answer_alphabet(task.family)
        broken = {
            "banned_word": BANNED in response.split(),
            "answer_format": len(shape) != len(want) or any(w not in alphabet for w in shape),
        }
        return {name: broken[name] for name in RULES}

    def score(self, prompt: str, response: str) -> float:
        """The response's score in [0, 1]; see the module docstring for the rule."""
        return self.judge(prompt, response).score

    def exact_match(self, prompt: str, response: str) -> bool:
        """Whether the response minus fillers is exactly the canonical answer."""
        return extract_answer(response) == _task_or_raise(prompt).answer

    def demonstrate(self, task: Task, rng: random.Random) -> str:
        """The demonstration a slightly careless human writes for `task`.

        The canonical answer (for an adversarial prompt, with probability literal_rate the literal one, banned word
        included); with probability filler_rate wrapped in one filler habit; independently, with probability
        banned_rate, the banned word inserted at a uniformly chosen position.
        """
        # The literal coin is thrown for adversarial tasks only, so ordinary tasks draw the stream they always did.
        literal = task.adversarial and rng.random() < self.literal_rate
        words = (task.literal_answer if literal else task.answer).split()
        # Both coins are always thrown so the two habits stay independent and the stream reproducible.
        add_filler, add_banned = rng.random() < self.filler_rate, rng.random() < self.banned_rate
        if add_filler:
            before, after = rng.choice(FILLER_HABITS)
            words = [*before, *words, *after]
        if add_banned:
            words.insert(rng.randint(0, len(words)), BANNED)
        return " ".join(words)

    def rank(self, prompt: str, responses: Sequence[str]) -> list[int]:
        """ranking[i] = dense rank of responses[i] by score, 0 = best; equal scores share a rank.

        With rank_noise > 0 each score gets Gaussian noise first (the same for repeated texts). The noise is seeded by the labeler's
        seed and the question itself, so asking the same question twice gets the same answer,
        whatever else was asked in between (data stays reproducible under any iteration order).
        """
        scores = [self.score(prompt, response) for response in responses]
        if self.rank_noise > 0:
            rng = random.Random(self._question_seed(prompt, responses))
            # One draw per position (the stream stays as it was), but a repeated text keeps its first draw: one
            # response ranked two ways would be a contradictory row, which the comparison reader refuses.
            noise: dict[str, float] = {}
            draws = [noise.setdefault(r, rng.gauss(0.0, self.rank_noise)) for r in responses]
            scores = [s + d for s, d in zip(scores, draws, strict=True)]
        rounded = [round(s, TIE_DECIMALS) for s in scores]
        levels = sorted(set(rounded), reverse=True)
        return [levels.index(r) for r in rounded]

    def _question_seed(self, prompt: str, responses: Sequence[str]) -> int:
        payload = json.dumps([self.seed, prompt, list(responses)]).encode()
        return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big")

    def compare(self, prompt: str, a: str, b: str) -> float:
        """1.0 if a scores higher than b, 0.5 on a tie (to 1e-6), 0.0 otherwise. No noise."""
        score_a = round(self.score(prompt, a), TIE_DECIMALS)
        score_b = round(self.score(prompt, b), TIE_DECIMALS)
        if score_a == score_b:
            return 0.5
        return 1.0 if score_a > score_b else 0.0
