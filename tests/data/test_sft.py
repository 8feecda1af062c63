import json
import logging

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lit_rlhf.data.rows import DataError
from lit_rlhf.data.sft import (
    IGNORE_INDEX,
    Example,
    OverlengthError,
    PackedExample,
    SFTDataModule,
    collate,
    pack,
    render_chat,
    tokenize_example,
)

X = IGNORE_INDEX
VOCAB = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, "user:": 4, "assistant:": 5, "hi": 6, "there": 7,
         "a": 8, "b": 9, "c": 10, "d": 11, "system:": 12}  # fmt: skip
WORDS = ["hi", "there", "a", "b", "c", "d"]


def make_tokenizer(bos=True, eos=True):
    """Whitespace word-level tokenizer; with bos=True it prepends [BOS] like Llama-style tokenizers."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]"}
    if bos:
        specials["bos_token"] = "[BOS]"
    if eos:
        specials["eos_token"] = "[EOS]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


@pytest.fixture
def tok():
    return make_tokenizer()


# --- rendering -----------------------------------------------------------------------------------------


def test_render_chat_plain_template(tok):
    messages = (("system", "be nice"), ("user", "hi"), ("assistant", "there"))
    assert render_chat(messages, tok) == ("system: be nice\nuser: hi\nassistant:", " there")


def test_render_chat_uses_the_tokenizer_template(tok):
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]
    assert render_chat(messages, tok) == ("<user>hi<assistant>", "there")


def test_render_chat_needs_a_final_assistant_message(tok):
    with pytest.raises(ValueError, match="final assistant"):
        render_chat((("user", "hi"), ("user", "again")), tok)


# --- tokenize_example ----------------------------------------------------------------------------------

PROMPT, RESPONSE = "user: hi\nassistant:", " there a"  # prompt ids [1, 4, 6, 5]; response ids [7, 8] + eos 2


def test_prompt_is_masked_and_eos_appended(tok):
    ex = tokenize_example(PROMPT, RESPONSE, tok, max_length=16, truncation="error")
    assert ex == Example(input_ids=[1, 4, 6, 5, 7, 8, 2], labels=[X, X, X, X, 7, 8, 2])


def test_exact_fit_is_not_truncated(tok):
    ex = tokenize_example(PROMPT, RESPONSE, tok, max_length=7, truncation="error")
    assert ex.input_ids == [1, 4, 6, 5, 7, 8, 2]


def test_overlength_error_names_source_and_lengths(tok):
    with pytest.raises(OverlengthError) as info:
        tokenize_example(PROMPT, RESPONSE, tok, max_length=6, truncation="error", source="data/sft.jsonl:7")
    err = info.value
    assert isinstance(err, DataError)
    assert str(err).startswith(
        "data/sft.jsonl:7: example is 7 tokens (prompt 4 + response with eos 3), over max_length 6"
    )
    assert (err.path, err.line) == ("data/sft.jsonl", 7)


def test_overlength_skip_returns_none(tok):
    assert tokenize_example(PROMPT, RESPONSE, tok, max_length=6, truncation="skip") is None


@pytest.mark.parametrize(
    ("max_length", "ids", "labels"),
    [
        (6, [1, 6, 5, 7, 8, 2], [X, X, X, 7, 8, 2]),  # prompt loses "user:" from the left, BOS stays
        (5, [1, 5, 7, 8, 2], [X, X, 7, 8, 2]),
        (4, [1, 7, 8, 2], [X, 7, 8, 2]),  # only BOS left of the prompt
        (3, [1, 7, 2], [X, 7, 2]),  # response + eos alone too long: its end is cut, eos kept last
        (2, [1, 2], [X, 2]),
    ],
)
def test_truncate_drops_prompt_from_the_left_then_cuts_the_response(tok, max_length, ids, labels):
    ex = tokenize_example(PROMPT, RESPONSE, tok, max_length=max_length, truncation="truncate")
    assert ex == Example(ids, labels)


def test_truncate_without_bos_keeps_no_head():
    tok = make_tokenizer(bos=False)
    ex = tokenize_example("user: hi", " a b", tok, max_length=4, truncation="truncate")  # [4, 6] + [8, 9, 2]
    assert ex == Example([6, 8, 9, 2], [X, 8, 9, 2])
    ex = tokenize_example("user: hi", " a b c", tok, max_length=3, truncation="truncate")  # [8, 9, 10, 2]
    assert ex == Example([8, 9, 2], [8, 9, 2])


def test_a_template_written_bos_is_not_doubled(tok):
    # A chat template that writes "[BOS]" itself, plus the tokenizer's own BOS, would give [1, 1, ...].
    assert tokenize_example("[BOS] hi", " a", tok, max_length=8, truncation="error") == Example(
        [1, 6, 8, 2], [X, X, 8, 2]
    )


def test_tokenizer_without_eos_is_refused():
    with pytest.raises(ValueError, match="no eos_token"):
        tokenize_example("hi", " a", make_tokenizer(eos=False), max_length=8, truncation="error")


def test_bad_fit_arguments_are_refused(tok):
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        tokenize_example("hi", " a", tok, max_length=1, truncation="truncate")
    with pytest.raises(ValueError, match="truncation must be one of error, skip, truncate, got 'cut'"):
        tokenize_example("hi", " a", tok, max_length=8, truncation="cut")


sentence = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)


SHARED_TOK = make_tokenizer()  # hypothesis reruns the body many times; a function fixture would be reused


@settings(max_examples=60, deadline=None)
@given(prompt=sentence, response=sentence, max_length=st.integers(2, 12))
def test_truncated_examples_fit_end_in_eos_and_label_only_a_suffix(prompt, response, max_length):
    ex = tokenize_example(prompt, " " + response, SHARED_TOK, max_length=max_length, truncation="truncate")
    n = len(ex.input_ids)
    assert n == len(ex.labels) <= max_length
    assert ex.input_ids[0] == 1 and ex.input_ids[-1] == 2
    masked = ex.labels.count(X)
    assert ex.labels[:masked] == [X] * masked  # labels: the prompt masked, then ...
    assert ex.labels[masked:] == ex.input_ids[masked:]  # ... exactly the response ids and eos
    assert masked >= 1


# --- collate and pack ----------------------------------------------------------------------------------

A = Example([1, 6, 8, 2], [X, X, 8, 2])
B = Example([1, 7, 2], [X, 7, 2])
D = Example([5, 7, 2], [5, 7, 2])  # a prompt-less (truncated) example: its first token carries a label


def test_collate_right_pads_by_hand():
    batch = collate([A, B], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[1, 6, 8, 2], [1, 7, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[X, X, 8, 2], [X, 7, 2, X]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pack_by_hand():
    rows = pack([A, D, B], max_length=7)
    assert rows == [
        PackedExample([1, 6, 8, 2, 5, 7, 2], [X, X, 8, 2, X, 7, 2], [0, 1, 2, 3, 0, 1, 2]),
        PackedExample([1, 7, 2], [X, 7, 2], [0, 1, 2]),
    ]


def test_collate_packed_rows_adds_position_ids():
    rows = pack([A, D, B], max_length=7)
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 6, 8, 2, 5, 7, 2], [1, 7, 2, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[X, X, 8, 2, X, 7, 2], [X, 7, 2, X, X, X, X]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]


def test_pack_and_collate_refuse_bad_input():
    with pytest.raises(ValueError, match="example 1 has 4 tokens, over max_length 3"):
        pack([B, A], max_length=3)
    with pytest.raises(ValueError, match="mixes packed and unpacked"):
        collate([A, PackedExample(*B, [0, 1, 2])], pad_id=0)
    with pytest.raises(ValueError, match="at least one example"):
        collate([], pad_id=0)


examples = st.lists(st.integers(1, 6), min_size=1, max_size=12).map(
    lambda lengths: [Example(list(range(10, 10 + n)), [X] + list(range(11, 10 + n))) for n in lengths]
)


@given(exs=examples, max_length=st.integers(6, 20))
def test_pack_keeps_every_token_in_order_within_max_length(exs, max_length):
    rows = pack(exs, max_length)
    assert all(len(r.input_ids) == len(r.labels) == len(r.position_ids) <= max_length for r in rows)
    assert [t for r in rows for t in r.input_ids] == [t for ex in exs for t in ex.input_ids]
    starts = sum(p == 0 for r in rows for p in r.position_ids)
    assert starts == len(exs)
    assert all(lab == X for r in rows for lab, p in zip(r.labels, r.position_ids, strict=True) if p == 0)


# --- SFTDataModule -------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": f"user: {w}\nassistant:", "response": " a b"} for w in WORDS]
        + [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]}],
    )
    val = write_jsonl(
        tmp_path / "val.jsonl",
        [
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]},
            {"prompt": "user: c\nassistant:", "response": " d"},
            {"prompt": "user: d\nassistant:", "response": " c"},
        ],
    )
    return train, val


def epoch_ids(dm):
    return [row for batch in dm.train_dataloader() for row in batch["input_ids"].tolist()]


def test_module_tokenizes_masks_and_shuffles_reproducibly(tok, files):
    train, val = files
    dm = SFTDataModule(train, val, batch_size=3, max_length=8, tokenizer=tok, seed=3)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].tolist() == [[1, 4, 6, 5, 7, 2], [1, 4, 10, 5, 11, 2], [1, 4, 11, 5, 10, 2]]
    assert batch["labels"].tolist() == [[X, X, X, X, 7, 2], [X, X, X, X, 11, 2], [X, X, X, X, 10, 2]]
    assert dm.val_prompts(2) == [(("user", "hi"),), "user: c\nassistant:"]  # rendered when generating
    assert dm.val_references(2) == ["there", " d"]
    assert [len(b["input_ids"]) for b in dm.train_dataloader()] == [3, 3, 1]
    again = SFTDataModule(train, val, batch_size=3, max_length=8, tokenizer=tok, seed=3)
    again.setup("fit")
    other = SFTDataModule(train, val, batch_size=3, max_length=8, tokenizer=tok, seed=4)
    other.setup("fit")
    assert epoch_ids(dm) == epoch_ids(again)
    assert epoch_ids(dm) != epoch_ids(other)
    assert sorted(epoch_ids(dm)) == sorted(epoch_ids(other))


def test_module_reports_bad_rows_and_length(tok, tmp_path, caplog):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"prompt": "user: hi\nassistant:", "response": " a"},  # 6 tokens
            {"prompt": "user: hi\nassistant:", "response": " a b c"},  # 8 tokens: over
            {"prompt": "user: hi\nassistant:", "response": ""},  # bad row
        ],
    )
    dm = SFTDataModule(train, batch_size=4, max_length=7, on_error="skip", truncation="skip", tokenizer=tok)
    with caplog.at_level(logging.INFO, logger="lit_rlhf.data"):
        dm.setup("fit")
    report = dm.reports["train"]
    assert report.summary() == f"{train}: read 3 rows, kept 1, skipped 2 (response: 1, length: 1)"
    assert report.summary() in caplog.text
    assert dm.val_dataloader() == []
    assert dm.val_prompts(3) == []

    dm = SFTDataModule(
        train, batch_size=4, max_length=7, on_error="skip", truncation="truncate", tokenizer=tok
    )
    dm.setup("fit")
    assert (
        dm.reports["train"].summary() == f"{train}: read 3 rows, kept 2, skipped 1 (response: 1), truncated 1"
    )
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 7)


def test_module_raises_on_overlength_by_default(tok, files):
    train, _ = files
    dm = SFTDataModule(train, max_length=5, tokenizer=tok)
    with pytest.raises(OverlengthError, match=r"train\.jsonl:1: example is 7 tokens"):
        dm.setup("fit")


def test_module_packing(tok, files):
    train, _ = files
    dm = SFTDataModule(train, batch_size=8, max_length=16, packing=True, tokenizer=tok)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    # six examples of 7 tokens and one of 6: two fit in a row of 16 -> rows of 14, 14, 14 and 6 tokens
    assert batch["input_ids"].shape == (4, 14)
    two = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6]
    one = [0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0]
    assert sorted(batch["position_ids"].tolist()) == [one, two, two, two]
    assert sorted(batch["attention_mask"].sum(dim=1).tolist()) == [6, 14, 14, 14]


def test_module_init_is_cheap_and_checks_every_setting(tmp_path):
    SFTDataModule(str(tmp_path / "does-not-exist.jsonl"))  # no file is read before setup
    with pytest.raises(ValueError) as info:
        SFTDataModule("x.jsonl", batch_size=0, max_length=1, on_error="ignore", truncation="cut")
    for problem in ("batch_size", "max_length", "on_error", "truncation"):
        assert problem in str(info.value)


def test_module_without_a_tokenizer_says_so(files):
    with pytest.raises(RuntimeError, match="no tokenizer"):
        SFTDataModule(files[0]).setup("fit")


class TinyLM(L.LightningModule):
    """Stands in for the SFT module: its tokenizer appears lazily, on first access."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(len(VOCAB), 4)
        self.head = torch.nn.Linear(4, len(VOCAB))
        self._tokenizer = None
        self.seen_batches = []
        self.val_batches = 0

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = make_tokenizer()
        return self._tokenizer

    def training_step(self, batch, batch_idx):
        self.seen_batches.append(batch)
        logits = self.head(self.embed(batch["input_ids"]))  # (B, T, V)
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, len(VOCAB)), batch["labels"][:, 1:].reshape(-1), ignore_index=X
        )

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_module_takes_the_tokenizer_from_the_lightning_module_and_runs_without_val(files, tmp_path):
    model = TinyLM()
    dm = SFTDataModule(files[0], batch_size=4, max_length=8)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert dm.tokenizer is model.tokenizer
    assert [b["input_ids"].shape[0] for b in model.seen_batches] == [4, 3]
    assert model.val_batches == 0  # val_dataloader() == [] means no validation, not an error


def test_unknown_token_share_warns_then_stops_with_the_file_named(tok, tmp_path, caplog):
    """A tokenizer that does not cover the data is loud: a warning over the warn share, an error over the limit."""
    good = {"prompt": "user: hi\nassistant:", "response": " a b"}
    few = write_jsonl(
        tmp_path / "few.jsonl", [good] * 40 + [{"prompt": "user: hi\nassistant:", "response": " zz"}]
    )
    dm = SFTDataModule(few, tokenizer=tok, max_length=16)
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert dm.unknown_share["train"] == pytest.approx(1 / (40 * 7 + 6))  # 1 unknown token in 286
    assert any("are the unknown token '[UNK]'" in r.message for r in caplog.records)
    many = write_jsonl(tmp_path / "many.jsonl", [{"prompt": "user: hi\nassistant:", "response": " zz yy"}])
    with pytest.raises(DataError, match=r"many.jsonl: 28.57% of its 7 tokens \(2\) are the unknown token"):
        SFTDataModule(many, tokenizer=tok, max_length=16).setup("fit")
    SFTDataModule(many, tokenizer=tok, max_length=16, unknown_tokens_error=0.5).setup("fit")  # configurable
