"""Compare: stage directories side by side on one prompt, per-token KL to a reference, optional RM scores,
and a person's ranking of the completions saved as a comparison row.

The only page that loads models: `dashboard.modeling` (torch) is imported when Generate is pressed, and each
model is loaded once per (stage directory, manifest mtime) with st.cache_resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from dashboard import loaders, safety, ui
from dashboard.labeling import save_ranking
from dashboard.safety import UnsafePath
from lit_rlhf.data.rows import DataError

RESULT_KEY = "compare_result"
RANK_KEY = "compare_rank_"  # + completion index
COLUMNS = 3  # completions side by side
DEFAULT_COMPARISONS = "comparisons/dashboard.jsonl"  # relative to the labels folder


@dataclass(frozen=True)
class Request:
    """What Generate was pressed with."""

    stage_dirs: tuple[loaders.StageDirInfo, ...]  # (M,) the models, in the order chosen
    reference: loaders.StageDirInfo
    reward: loaders.StageDirInfo | None
    prompt: str
    sampling: dict[str, Any]  # SamplingConfig fields
    seed: int


@dataclass(frozen=True)
class Result:
    """What the page keeps in session state, so ranking widgets survive reruns."""

    prompt: str
    reference: str
    completions: list[Any]  # (M,) dashboard.modeling.Completion
    scores: list[float] | None  # (M,) RM scores
    note: str | None  # why there are no RM scores although an RM was picked
    judged: list[dict[str, float]] | None = (
        None  # (M,) the start-up judge's score and details, when there is one
    )
    judge_note: str | None = None  # why the judge gave nothing


@st.cache_resource(max_entries=6, show_spinner=False)
def _model(path: str, manifest_mtime_ns: int, label: str):
    from dashboard.modeling import load_model

    return load_model(path, label, trust_remote_code=safety.trust_remote_code())


@st.cache_resource(max_entries=2, show_spinner=False)
def _scorer(path: str, manifest_mtime_ns: int):
    from lit_rlhf.evaluation.reward_model import RewardScorer

    return RewardScorer(path, trust_remote_code=safety.trust_remote_code())


def _describe(d: loaders.StageDirInfo | None) -> str:
    return "(none)" if d is None else f"{d.label}  [{d.stage}, step {d.step}]"


def _sampling_inputs() -> tuple[dict[str, Any], int]:
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    sampling = {
        "max_new_tokens": int(c1.number_input("Max new tokens", 1, 512, 32)),
        "do_sample": c2.toggle("Sample", value=False, help="off: greedy decoding"),
        "temperature": c3.slider("Temperature", 0.05, 2.0, 1.0, 0.05),
        "top_k": int(c4.number_input("Top-k (0: off)", 0, 1000, 0)),
        "top_p": c5.slider("Top-p", 0.05, 1.0, 1.0, 0.05),
    }
    return sampling, int(c6.number_input("Seed", 0, 2**31 - 1, 0))


def _request(found: list[loaders.StageDirInfo]) -> Request | None:
    """The settings widgets; a Request when Generate is pressed, else None."""
    # the newest PPO stage and its SFT parent, KL to that SFT stage, scored by the PPO run's reward model
    defaults = loaders.compare_defaults(found)
    chosen = st.multiselect(
        "Stage directories to compare", found, default=defaults.chosen, format_func=_describe
    )
    for d in chosen:  # plain text: the name comes from a manifest someone else may have written
        if d.external_base:
            st.text(f"Note: {d.label}: {d.external_base}.")
    prompt = st.text_area("Prompt", placeholder="e.g. sort d c b =")
    sampling, seed = _sampling_inputs()
    start = found.index(defaults.reference) if defaults.reference in found else 0
    reference = st.selectbox("KL reference", found, index=start, format_func=_describe)
    rewards = [None, *(d for d in found if d.stage == "reward")]
    reward = st.selectbox(
        "Reward model (scores each completion)",
        rewards,
        index=rewards.index(defaults.reward) if defaults.reward in rewards else 0,
        format_func=_describe,
    )
    ready = len(chosen) >= 2 and bool(prompt.strip())
    if not st.button("Generate", type="primary", disabled=not ready, key="compare_generate"):
        if not ready:
            st.text("Choose at least two stage directories and type a prompt.")
        return None
    return Request(tuple(chosen), reference, reward, prompt, sampling, seed)


def _score(request: Request, texts: list[str]) -> tuple[list[float] | None, str | None]:
    """RM scores of the completions, or None and the reason (a failing RM must not hide the completions)."""
    if request.reward is None:
        return None, None
    try:
        scorer = _scorer(request.reward.path, request.reward.manifest_mtime_ns)
        return scorer.score([request.prompt] * len(texts), texts), None
    except Exception as err:  # ImportError, a bad stage directory: say so next to the completions
        return None, f"RM scoring failed: {type(err).__name__}: {err}"


@st.cache_resource(max_entries=2, show_spinner=False)
def _judge(spec: str):
    from lit_rlhf.judges import load_judge

    return load_judge(spec)


def _judged(prompt: str, texts: list[str]) -> tuple[list[dict[str, float]] | None, str | None]:
    """The start-up judge's view of each completion (`--judge`), or None and why (a bad judge must not hide the
    completions)."""
    from dashboard.safety import judge_spec

    spec = judge_spec()
    if spec is None:
        return None, None
    try:
        from lit_rlhf.judges import judge_item

        judge = _judge(spec)
        return [judge_item(judge, prompt, t) for t in texts], None
    except Exception as err:  # JudgeError, an import failing inside the judge's module
        return None, f"Judge {spec!r} failed: {type(err).__name__}: {err}"


def _generate(request: Request) -> Result:
    """Load the models (cached), generate and score every token against the reference."""
    from dashboard.modeling import compare
    from lit_rlhf.backbone.generate import SamplingConfig

    def model(d: loaders.StageDirInfo):
        return _model(d.path, d.manifest_mtime_ns, d.label)

    models = [model(d) for d in request.stage_dirs]
    sampling = SamplingConfig(**request.sampling)
    completions = compare(models, request.prompt, sampling, model(request.reference), request.seed)
    scores, note = _score(request, [c.text for c in completions])
    judged, judge_note = _judged(request.prompt, [c.text for c in completions])
    return Result(request.prompt, request.reference.label, completions, scores, note, judged, judge_note)


def _show_one(i: int, completion: Any, score: float | None, judged: dict[str, float] | None = None) -> None:
    st.text(f"#{i + 1}  {completion.label}")
    st.text(completion.text)
    facts = [f"{len(completion.tokens)} tokens"]
    if score is not None:
        facts.append(f"RM score {score:+.4f}")
    if judged:
        details = ", ".join(f"{k} {v:g}" for k, v in judged.items() if k != "score")
        facts.append(f"judge score {judged['score']:.4f}" + (f" ({details})" if details else ""))
    elif judged is not None:
        facts.append("the judge cannot judge this prompt")
    if completion.kl_sum is None:
        facts.append("no KL: the reference's vocabulary differs")
    else:
        facts.append(f"KL to reference {completion.kl_sum:+.4f} (sum over tokens)")
    st.text(" · ".join(facts))
    if completion.kl is not None:
        st.altair_chart(ui.kl_chart(completion.tokens, completion.kl), width="content")


def _show(result: Result) -> None:
    """The completions side by side, at most COLUMNS to a row."""
    st.text(f"Prompt: {result.prompt}")
    st.text(f"KL reference: {result.reference}")
    for note in (result.note, result.judge_note):
        if note:
            st.text(note)
    for start in range(0, len(result.completions), COLUMNS):
        for i, col in enumerate(st.columns(COLUMNS), start=start):
            if i < len(result.completions):
                with col:
                    score = None if result.scores is None else result.scores[i]
                    judged = None if result.judged is None else result.judged[i]
                    _show_one(i, result.completions[i], score, judged)


def _rank_and_save(result: Result) -> None:
    k = len(result.completions)
    st.subheader("Rank the completions")
    ranking = [
        int(col.number_input(f"Rank of #{i + 1} (0 = best)", 0, k - 1, i, key=f"{RANK_KEY}{i}"))
        for i, col in enumerate(st.columns(k))
    ]
    root = ui.labels_root()
    path = st.text_input(
        f"Comparisons file (JSONL in {root}, appended to)", DEFAULT_COMPARISONS, key="compare_file"
    )
    if st.button("Save ranking", key="compare_save"):
        try:
            texts = [c.text for c in result.completions]
            saved = save_ranking(path, result.prompt, texts, ranking, root=root)
        except DataError as err:
            st.error("Not saved: the row is not a valid comparison.")
            st.code(str(err), language=None)
        except (UnsafePath, OSError) as err:  # outside the labels folder, a folder or FIFO in the way
            st.error("Not saved: the dashboard does not write there.")
            st.code(str(err), language=None)
        else:
            st.success("Saved.")
            st.text(f"Appended to {path}: ranking {list(saved.ranking)}")


st.title("Compare")
found, problems = loaders.find_stage_dirs(ui.sidebar_runs_root())
ui.show_problems(problems, what="stage directories")
if not found:
    st.info("No stage directories under this runs root yet; a run writes one (`stage/`) at the end of fit:")
    st.code(loaders.FIRST_RUN_COMMAND, language="bash")
    st.stop()

request = _request(found)
if request is not None:
    try:
        with st.spinner("Loading models and generating..."):
            st.session_state[RESULT_KEY] = _generate(request)
        for key in [k for k in st.session_state if str(k).startswith(RANK_KEY)]:
            del st.session_state[key]  # ranks typed for the previous completions do not apply to these
    except Exception as err:  # a bad stage directory or prompt must not take the page down
        st.error("Generation failed.")
        st.code(f"{type(err).__name__}: {err}", language=None)
if RESULT_KEY in st.session_state:
    _show(st.session_state[RESULT_KEY])
    _rank_and_save(st.session_state[RESULT_KEY])
