"""The demo tokenizer: one id per word, BOS on single sequences only, exact decode round trip, reload."""

import os

import pytest
from transformers import AutoTokenizer

from lit_rlhf.demo.tokenizer import train_tokenizer
from lit_rlhf.demo.world import VOCABULARY

TEXTS = ["reverse c a b =", "b a c", "sure : a c d", "add 7 8 = 1 5", "count b a l k = 4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tok") / "tokenizer"
    return train_tokenizer(TEXTS, out_dir), out_dir


def test_special_tokens_take_the_first_ids(trained):
    tok, _ = trained
    assert [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2, 3]
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == (
        "[PAD]",
        "[UNK]",
        "[BOS]",
        "[EOS]",
    )


def test_one_token_per_word_with_bos_prepended(trained):
    tok, _ = trained
    ids = tok("reverse c a b =")["input_ids"]
    assert len(ids) == 6
    assert ids[0] == tok.bos_token_id
    plain = tok("reverse c a b =", add_special_tokens=False)["input_ids"]
    assert plain == ids[1:]
    assert tok.convert_ids_to_tokens(plain) == ["reverse", "c", "a", "b", "="]


def test_every_word_of_the_language_has_its_own_id_even_if_unseen(trained):
    tok, _ = trained
    ids = [tok.convert_tokens_to_ids(word) for word in VOCABULARY]
    assert tok.unk_token_id not in ids
    assert len(set(ids)) == len(VOCABULARY)
    assert len(tok) == len(VOCABULARY) + 4
    assert "dang" not in " ".join(TEXTS)  # so the line above really tests the seeding


def test_unknown_word_maps_to_unk(trained):
    tok, _ = trained
    assert tok("zebra a", add_special_tokens=False)["input_ids"] == [
        tok.unk_token_id,
        tok.convert_tokens_to_ids("a"),
    ]


@pytest.mark.parametrize("text", [*TEXTS, " ".join(VOCABULARY), "here : dang 1 0 done", "a"])
def test_decode_round_trips_exactly(trained, text):
    tok, _ = trained
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_padding_is_on_the_right(trained):
    tok, _ = trained
    batch = tok(["a b", "reverse c a b ="], padding=True)
    assert batch["input_ids"][0][3:] == [tok.pad_token_id] * 3
    assert batch["attention_mask"][0] == [1, 1, 1, 0, 0, 0]


def test_reload_gives_the_same_ids_and_settings(trained):
    tok, out_dir = trained
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    for text in [*TEXTS, " ".join(VOCABULARY)]:
        assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
        assert reloaded.decode(reloaded(text)["input_ids"], skip_special_tokens=True) == text
    assert reloaded.get_vocab() == tok.get_vocab()
    assert (reloaded.padding_side, reloaded.model_max_length, reloaded.pad_token_id) == ("right", 64, 0)


def test_retraining_replaces_the_directory_and_leaves_no_temp_files(tmp_path):
    out_dir = tmp_path / "tokenizer"
    train_tokenizer(["a b"], out_dir)
    (out_dir / "stale.txt").write_text("from an older run")
    tok = train_tokenizer(["zebra zebra"], out_dir, model_max_length=32)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer"]
    assert not (out_dir / "stale.txt").exists()
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    assert reloaded.convert_tokens_to_ids("zebra") == tok.convert_tokens_to_ids("zebra") != tok.unk_token_id
    assert reloaded.model_max_length == 32


def test_same_texts_give_the_same_vocabulary(tmp_path):
    first = train_tokenizer(TEXTS, tmp_path / "one")
    second = train_tokenizer(TEXTS, tmp_path / "two")
    assert first.get_vocab() == second.get_vocab()
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (
        tmp_path / "two" / "tokenizer.json"
    ).read_bytes()
