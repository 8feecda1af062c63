"""One prompt format and one token format for every stage: how a prompt becomes model text, and how a
(prompt, response) pair becomes token ids.

Lives here: `PromptFormat` (the setting, recorded in every stage directory so later stages inherit it) and
`TextFormat` (a tokenizer + that setting), whose methods are the ONLY way lit-rlhf turns prompts and responses
into ids: SFT examples, SFT samples, comparison collection, reward-model training and scoring, PPO rollouts,
`evaluate` and the dashboard all call them. A chat model therefore sees its own chat template (and the same
system prompt choice) everywhere, whether a row gives ``prompt`` or ``messages``, and the reward model scores
exactly the token sequence it was trained on.

A prompt is a `PromptSpec`: a string (a raw prompt; wrapped as one user message when a chat template is used) or a
tuple of ``(role, content)`` messages ending with a user message.
Must not live here: reading files (rows.py), tensors and padding beyond lists of ids, models.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Messages = tuple[tuple[str, str], ...]
PromptSpec = str | Messages
Template = Literal["auto", "chat", "plain"]

# The plain chat template used when a chat template is not used: one "role: content" line per message, then
# "assistant:" as the generation prompt. The response starts with a space so its first word tokenizes the same
# as it would mid-line.
PLAIN_ROLE_LINE = "{role}: {content}\n"
PLAIN_GENERATION_PROMPT = "assistant:"
_SENTINEL = "\u2063lit-rlhf-end-of-turn-probe\u2063"


@dataclass
class PromptFormat:
    """How prompts are rendered for the model; set once (SFT) and inherited by every later stage.

    Attributes:
        template: ``auto`` renders prompts with the tokenizer's chat template when it has one (a ``prompt`` string
            becomes one user message), else as plain text; ``chat`` requires a chat template (an error names the
            tokenizer otherwise); ``plain`` never uses one (raw prompts as they are, ``messages`` rows as
            "role: content" lines).
        system_prompt: A system message put first when a conversation has none; null keeps the template's own
            default (SmolLM2's template adds "You are a helpful AI assistant named SmolLM...").
    """

    template: Template = "auto"
    system_prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PromptFormat:
        """From a manifest's ``prompt_format`` (empty or missing: the defaults, as stages written before it)."""
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown prompt_format fields: {sorted(unknown)}")
        fmt = cls(**d)
        if fmt.template not in ("auto", "chat", "plain"):
            raise ValueError(f"prompt_format.template must be auto, chat or plain, got {fmt.template!r}")
        return fmt


def as_messages(messages: Sequence[Any]) -> Messages:
    """Accept (role, content) pairs or {"role", "content"} mappings."""
    return tuple((m["role"], m["content"]) if isinstance(m, Mapping) else (m[0], m[1]) for m in messages)


def as_prompt_spec(value: Any) -> PromptSpec:
    """A prompt string as it is; a list of messages as a tuple of (role, content) pairs."""
    return value if isinstance(value, str) else as_messages(value)


def prompt_for_judge(prompt: PromptSpec) -> str:
    """The text a judge reads for a prompt: the string itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    users = [content for role, content in prompt if role == "user"]
    return users[-1] if users else prompt[-1][1]


def prompt_to_json(prompt: PromptSpec) -> str | list[dict[str, str]]:
    """The JSON value of a prompt (string, or a list of {role, content} objects)."""
    if isinstance(prompt, str):
        return prompt
    return [{"role": role, "content": content} for role, content in prompt]


class TextFormat:
    """A tokenizer with a PromptFormat: renders prompts and builds every token sequence lit-rlhf feeds a model.

    Args:
        tokenizer: A Hugging Face tokenizer with an eos token (and a pad token: load_tokenizer ensures one).
        prompt_format: The rendering setting (default: ``auto``).
    """

    def __init__(self, tokenizer: Any, prompt_format: PromptFormat | None = None) -> None:
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format or PromptFormat()
        has_template = bool(getattr(tokenizer, "chat_template", None))
        template = self.prompt_format.template
        if template == "chat" and not has_template:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(
                f"prompt_format.template is 'chat' but the tokenizer {name!r} has no chat template: set "
                "template: plain, or use a tokenizer that has one"
            )
        self.uses_chat = has_template and template != "plain"
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError(
                "the tokenizer has no eos_token: every response ends with an end-of-turn token so the model "
                "learns to stop; set tokenizer.eos_token (or add one)"
            )
        self.end_of_turn_id = self._find_end_of_turn()
        eos = tokenizer.eos_token_id
        # generation stops at either: a chat model ends its turn with end_of_turn, a base model with eos
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys([self.end_of_turn_id, eos]))
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id: int = eos if pad is None else pad

    def describe(self) -> str:
        """One line for the log: which template renders prompts and which token ends a turn."""
        how = "the tokenizer's chat template" if self.uses_chat else "plain text (no chat template)"
        system = self.prompt_format.system_prompt
        extra = "" if system is None else f", system prompt {system!r}"
        eot = self.tokenizer.convert_ids_to_tokens(self.end_of_turn_id)
        return f"prompts rendered with {how}{extra}; responses end with {eot!r} (id {self.end_of_turn_id})"

    # ---- text ---------------------------------------------------------------------------------------------
    def _conversation(self, messages: Messages) -> list[dict[str, str]]:
        system = self.prompt_format.system_prompt
        out = [{"role": role, "content": content} for role, content in messages]
        if system is not None and (not out or out[0]["role"] != "system"):
            out.insert(0, {"role": "system", "content": system})
        return out

    def render_prompt(self, prompt: PromptSpec) -> str:
        """The prompt text the model continues: chat template with the generation prompt, or plain text."""
        if self.uses_chat:
            messages = (("user", prompt),) if isinstance(prompt, str) else prompt
            return self.tokenizer.apply_chat_template(
                self._conversation(messages), tokenize=False, add_generation_prompt=True
            )
        if isinstance(prompt, str):
            return prompt
        lines = "".join(PLAIN_ROLE_LINE.format(role=role, content=content) for role, content in prompt)
        return lines + PLAIN_GENERATION_PROMPT

    def response_text(self, prompt: PromptSpec, response: str) -> str:
        """The response as it is tokenized after the rendered prompt (plain chat renderings add a space)."""
        plain_chat = not self.uses_chat and not isinstance(prompt, str)
        return " " + response if plain_chat else response

    # ---- ids ----------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: PromptSpec) -> list[int]:
        """Token ids of the rendered prompt.

        A chat template writes its own special tokens (BOS included where it has one), so they are not added
        again; plain text gets the tokenizer's own (e.g. BOS). A doubled BOS is collapsed either way.
        """
        ids = self.tokenizer(self.render_prompt(prompt), add_special_tokens=not self.uses_chat)["input_ids"]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and ids[:2] == [bos, bos]:
            ids = ids[1:]
        return list(ids)

    def response_ids(self, prompt: PromptSpec, response: str) -> list[int]:
        """Token ids of a response's text (no special tokens added, no end-of-turn)."""
        return list(
            self.tokenizer(self.response_text(prompt, response), add_special_tokens=False)["input_ids"]
        )

    def sequence(self, prompt: PromptSpec, response: str) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids + end-of-turn): the one token format of a (prompt, response) pair.

        SFT trains on it, the reward model is trained and scored on it (in training, collection, PPO, `evaluate`
        and the dashboard alike), so a response's reward never depends on which path asked.
        """
        return self.prompt_ids(prompt), [*self.response_ids(prompt, response), self.end_of_turn_id]

    def decode_response(self, ids: Sequence[int]) -> str:
        """A response's text as a judge reads it: special tokens dropped, surrounding whitespace stripped."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- the end-of-turn token ----------------------------------------------------------------------------
    def _find_end_of_turn(self) -> int:
        """The token a chat template puts right after an assistant message (``<|im_end|>``, ``<|eot_id|>``...).

        Found by rendering a probe conversation; eos when no chat template is used or the template puts no
        special token there.
        """
        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        if not self.uses_chat:
            return eos
        try:
            text = tok.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
                tokenize=False,
            )
        except Exception as e:  # a template that cannot render a plain exchange: keep eos, say so
            log.warning("could not probe the chat template for its end-of-turn token (%s); using eos", e)
            return eos
        after = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
        ids = tok(after, add_special_tokens=False)["input_ids"] if after else []
        special = set(getattr(tok, "all_special_ids", []) or [])
        special |= {i for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items() if t.special}
        return ids[0] if ids and ids[0] in special else eos


def data_format(tokenizer: Any, trainer: Any, owner: str) -> TextFormat:
    """The TextFormat a data module tokenizes with.

    A tokenizer (or TextFormat) given to the data module wins; otherwise the LightningModule's ``text_format``
    (its tokenizer with the stage's recorded prompt format), else its ``tokenizer``. Lightning runs the data
    module's ``setup`` before the LightningModule's ``configure_model``, so those must load lazily.
    """
    if isinstance(tokenizer, TextFormat):
        return tokenizer
    if tokenizer is not None:
        return TextFormat(tokenizer)
    module = trainer.lightning_module if trainer is not None else None
    fmt = getattr(module, "text_format", None)
    if fmt is not None:
        return fmt
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError(
            f"{owner} has no tokenizer: pass tokenizer=..., or give the LightningModule a `text_format` or "
            "`tokenizer` attribute (or lazy property) usable before its setup()/configure_model()"
        )
    return TextFormat(tokenizer)


# Defaults of every data module's unknown-token check (shares of all tokens of a file).
UNKNOWN_WARN = 0.001
UNKNOWN_ERROR = 0.05


def check_unknown_tokens(
    path: str, rows: Sequence[Sequence[int]], tokenizer: Any, warn_at: float, error_at: float
) -> float:
    """Report the share of `tokenizer`'s unknown token among the token ids of one data file; return it.

    A tokenizer that does not cover the data turns words into ``<unk>``, and nothing downstream notices: a
    word-level tokenizer on other text once gave 23% unknown pretraining tokens and a PPO-ptx run that drifted to a
    KL of 13.5. Above `warn_at` this logs a warning; above `error_at` it raises a DataError naming the file.
    """
    from lit_rlhf.data.rows import DataError

    unk = getattr(tokenizer, "unk_token_id", None)
    total = sum(len(r) for r in rows)
    if unk is None or total == 0:
        return 0.0
    count = sum(sum(1 for t in r if t == unk) for r in rows)
    share = count / total
    message = (
        f"{share:.2%} of its {total} tokens ({count}) are the unknown token {tokenizer.unk_token!r}: the tokenizer "
        "does not cover this data. Use a tokenizer that does (or train its embeddings: lora.modules_to_save)"
    )
    if share > error_at:
        raise DataError(path, None, None, f"{message}; the limit is {error_at:.2%} (unknown_tokens_error)")
    if share > warn_at:
        log.warning("%s: %s", path, message)
    else:
        log.info("%s: %.3f%% unknown tokens", path, 100 * share)
    return share
