"""Hugging Face `datasets` as data: save_to_disk folders (Dataset and DatasetDict), folders of JSONL and parquet
files, column mappings, whole-conversation chosen/rejected, and the errors that name dataset, split, row and field.

Every dataset is written by the test into tmp_path; nothing is downloaded (HF_HUB_OFFLINE=1, tests/conftest.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from lit_rlhf.data.rows import DataError, read_rows, row_to_dict
from lit_rlhf.data.sources import DataSource, as_spec

datasets = pytest.importorskip("datasets")

DEMOS = [
    {"prompt": "a b =", "response": "b a"},
    {"prompt": "c d e =", "response": "e d c"},
    {"prompt": "f =", "response": "f"},
]
QA = [{"question": r["prompt"], "answer": r["response"], "id": i} for i, r in enumerate(DEMOS)]
PAIRS = [
    {"prompt": "a b =", "chosen": "b a", "rejected": "a b"},
    {"prompt": "c d =", "chosen": "d c", "rejected": "c c"},
]
KWISE = [
    {"prompt": "a b c =", "responses": ["c b a", "a b c", "c a b"], "ranking": [0, 2, 1]},
    {"prompt": "d e =", "responses": ["e d", "d e"], "ranking": [1, 0]},
]
FORMS = ["saved", "saved_dict", "jsonl_folder", "parquet_folder"]


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    # load_dataset caches what it builds; keep it in the test's folder, not the user's home
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_dataset(form: str, rows: list[dict], root: Path, split: str = "train") -> str:
    """`rows` written as a dataset in `form`; returns the hf: spec that reads it (split named where needed)."""
    root.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows)
    if form == "saved":
        ds.save_to_disk(str(root / "ds"))
        return f"hf:{root / 'ds'}"
    if form == "saved_dict":
        other = datasets.Dataset.from_list(rows[:1])
        datasets.DatasetDict({split: ds, "other": other}).save_to_disk(str(root / "ds"))
        return f"hf:{root / 'ds'}?split={split}"
    folder = root / "files"
    folder.mkdir()
    if form == "jsonl_folder":  # two files: a folder is read as one split, file order kept
        write_jsonl(folder / f"{split}-00000.jsonl", rows[:1])
        write_jsonl(folder / f"{split}-00001.jsonl", rows[1:])
    else:
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return f"hf:{folder}?split={split}"


def plain(rows) -> list[dict]:
    return [row_to_dict(r) for r in rows]


# ---------------------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------------------


def test_the_string_form_round_trips_and_refuses_unknown_keys():
    src = DataSource("data/my qa", split="train", columns={"prompt": "question", "messages": None})
    assert src.spec() == "hf:data/my qa?split=train&prompt=question&messages="
    assert DataSource.parse(src.spec()) == src
    assert as_spec(src) == src.spec() and as_spec("x.jsonl") == "x.jsonl" and as_spec(None) is None
    with pytest.raises(DataError, match=r"hf:x\?promt=q: field 'promt': unknown key"):
        DataSource.parse("hf:x?promt=q")
    with pytest.raises(ValueError, match="columns: unknown field 'answer'"):
        DataSource("x", columns={"answer": "a"})


def test_a_yaml_mapping_configures_a_data_module_and_hparams_stay_plain(tmp_path):
    """`train_path: {path, split, columns}` in a config builds a DataSource; hparams record its hf: string."""
    import yaml
    from jsonargparse import ArgumentParser

    from lit_rlhf.data.sft import SFTDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SFTDataModule, "data")
    config = {"data": {"train_path": {"path": "d", "split": "train", "columns": {"prompt": "question"}}}}
    dm = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).data
    assert dm.train_path == "hf:d?split=train&prompt=question"
    assert dm.hparams["train_path"] == dm.train_path and dm.hparams["val_path"] is None
    assert parser.parse_args(["--data.train_path", "x.jsonl"]).data.train_path == "x.jsonl"


# ---------------------------------------------------------------------------------------------------------
# Every kind from every form
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_demonstrations_from_each_form_equal_the_jsonl_file(form, tmp_path):
    expected, _ = read_rows(write_jsonl(tmp_path / "d.jsonl", DEMOS), "demonstration")
    spec = write_dataset(form, DEMOS, tmp_path / "ds")
    rows, report = read_rows(spec, "demonstration")
    assert plain(rows) == plain(expected)
    assert report.read == report.kept == 3
    split = "" if form == "saved" else "[train]"
    assert rows[2].source.endswith(f"{split}[2]") and rows[2].source.startswith("hf:")


@pytest.mark.parametrize("form", FORMS)
def test_a_column_mapping_reads_question_answer(form, tmp_path):
    spec = write_dataset(form, QA, tmp_path / "ds")
    sep = "&" if "?" in spec else "?"
    rows, _ = read_rows(f"{spec}{sep}prompt=question&response=answer", "demonstration")
    assert plain(rows) == DEMOS
    prompts, _ = read_rows(DataSource.parse(spec + f"{sep}prompt=question&reference=answer"), "prompt")
    assert [(p.prompt, p.reference) for p in prompts] == [(d["prompt"], d["response"]) for d in DEMOS]


@pytest.mark.parametrize("form", FORMS)
def test_prompts_pairs_and_rankings_from_each_form(form, tmp_path):
    prompts, _ = read_rows(write_dataset(form, DEMOS, tmp_path / "p"), "prompt")
    assert [(p.prompt, p.reference) for p in prompts] == [(d["prompt"], d["response"]) for d in DEMOS]
    pairs, _ = read_rows(write_dataset(form, PAIRS, tmp_path / "c2"), "comparison")
    assert [(c.prompt, c.responses, c.ranking) for c in pairs] == [
        (p["prompt"], (p["chosen"], p["rejected"]), (0, 1)) for p in PAIRS
    ]
    ranked, _ = read_rows(write_dataset(form, KWISE, tmp_path / "ck"), "comparison")
    assert plain(ranked) == KWISE


def test_text_and_rule_rows_from_a_dataset(tmp_path):
    spec = write_dataset("saved_dict", [{"body": "a b"}, {"body": "c"}], tmp_path / "t2")
    texts, _ = read_rows(spec + "&text=body", "text")
    assert [t.text for t in texts] == ["a b", "c"]
    # Arrow gives every row every rule (null where a row named none): null means unsure, as in a file
    rules = [
        {"prompt": "a =", "response": "a", "labels": {"tone": True}},
        {"prompt": "b =", "response": "b", "labels": {"format": False}},
    ]
    rows, _ = read_rows(write_dataset("saved", rules, tmp_path / "r") + "?rules=labels", "rule")
    assert [r.rules for r in rows] == [{"tone": True, "format": None}, {"tone": None, "format": False}]


def test_null_columns_count_as_absent_in_a_dataset(tmp_path):
    """A JSONL folder mixing prompt/response and messages rows: each row reads the fields it has."""
    chat = {"messages": [{"role": "user", "content": "a ="}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "mix").mkdir()
    write_jsonl(tmp_path / "mix" / "part.jsonl", [DEMOS[0], chat])
    rows, _ = read_rows(f"hf:{tmp_path / 'mix'}", "demonstration")
    assert plain(rows) == [DEMOS[0], chat]
    # files whose columns differ cannot make one table: the loader's reason is in the one-line error
    write_jsonl(tmp_path / "mix" / "part2.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match="could not load the folder as a dataset: .*Couldn't cast") as err:
        read_rows(f"hf:{tmp_path / 'mix'}", "demonstration")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# chosen/rejected as whole conversations
# ---------------------------------------------------------------------------------------------------------


def conv(*turns: str) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


HH = [
    {"chosen": conv("hi", "hello", "a b =", "b a"), "rejected": conv("hi", "hello", "a b =", "a b")},
    {"chosen": conv("c =", "c"), "rejected": conv("c =", "c c")},
]


@pytest.mark.parametrize("form", ["jsonl", *FORMS])
def test_whole_conversations_split_into_shared_prompt_and_last_answer(form, tmp_path):
    source = write_jsonl(tmp_path / "hh.jsonl", HH) if form == "jsonl" else write_dataset(form, HH, tmp_path)
    rows, _ = read_rows(source, "comparison")
    assert rows[0].prompt == (("user", "hi"), ("assistant", "hello"), ("user", "a b ="))
    assert rows[0].responses == ("b a", "a b") and rows[0].ranking == (0, 1)
    assert rows[1].prompt == (("user", "c ="),) and rows[1].responses == ("c", "c c")


def test_ultrafeedback_and_prompt_plus_answer_only_layouts(tmp_path):
    # UltraFeedback-style: a prompt column beside conversations that hold it (the conversations win)
    uf = [{"prompt": "a b =", "chosen": conv("a b =", "b a"), "rejected": conv("a b =", "a b"), "score": 9.0}]
    rows, _ = read_rows(write_dataset("saved_dict", uf, tmp_path / "uf"), "comparison")
    assert rows[0].prompt == (("user", "a b ="),) and rows[0].responses == ("b a", "a b")
    # conversations holding only the answer: the prompt comes from the row's prompt (or messages)
    answers = [{"q": conv("a b ="), "good": [conv("", "b a")[1]], "bad": [conv("", "a b")[1]]}]
    spec = write_dataset("saved", answers, tmp_path / "ans") + "?messages=q&chosen=good&rejected=bad"
    rows, _ = read_rows(spec, "comparison")
    assert rows[0].prompt == (("user", "a b ="),) and rows[0].responses == ("b a", "a b")


def test_conversations_that_do_not_share_the_prompt_name_row_and_field(tmp_path):
    bad = [
        {"pos": conv("c =", "c"), "neg": conv("c =", "d")},
        {"pos": conv("c =", "c"), "neg": conv("d =", "d")},
    ]
    spec = write_dataset("saved_dict", bad, tmp_path) + "&chosen=pos&rejected=neg"
    with pytest.raises(DataError) as err:
        read_rows(spec, "comparison")
    assert str(err.value).startswith(
        f"hf:{tmp_path / 'ds'}[train][1]: field 'neg[0]': the conversations do not share"
    )
    longer = {
        "chosen": conv("hi", "hello", "c =", "c"),
        "rejected": conv("hi", "hello", "c =", "d", "e =", "e"),
    }
    with pytest.raises(
        DataError, match=r"hh.jsonl:1: field 'rejected': .*'chosen' has 3 messages before its answer"
    ):
        read_rows(write_jsonl(tmp_path / "hh.jsonl", [longer]), "comparison")
    same = {"chosen": conv("c =", "c"), "rejected": conv("c =", "c")}
    with pytest.raises(DataError, match=r"field 'rejected': identical to 'chosen'"):
        read_rows(write_jsonl(tmp_path / "same.jsonl", [same]), "comparison")
    mixed = {"chosen": conv("c =", "c"), "rejected": "d"}
    with pytest.raises(DataError, match=r"field 'rejected': expected a conversation like 'chosen'"):
        read_rows(write_jsonl(tmp_path / "mixed.jsonl", [mixed]), "comparison")


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def test_a_bad_row_names_dataset_split_row_and_column(tmp_path, caplog):
    rows = [*QA[:2], {"question": "x =", "answer": "   ", "id": 2}]
    spec = write_dataset("saved_dict", rows, tmp_path) + "&prompt=question&response=answer"
    where = f"hf:{tmp_path / 'ds'}[train]"
    with pytest.raises(DataError) as err:
        read_rows(spec, "demonstration")
    assert str(err.value) == f"{where}[2]: field 'answer': must not be empty (or only whitespace)"
    kept, report = read_rows(spec, "demonstration", on_error="skip")
    assert len(kept) == 2 and report.summary() == f"{where}: read 3 rows, kept 2, skipped 1 (answer: 1)"


def test_unmapped_columns_and_unknown_mapped_columns_list_the_columns(tmp_path):
    spec = write_dataset("saved", QA, tmp_path)
    with pytest.raises(DataError, match=r"\[0\]: field 'prompt': missing .*columns are question, answer, id"):
        read_rows(spec, "demonstration")
    with pytest.raises(
        DataError, match=r"field 'columns.response': no column 'answr' in the dataset; its columns"
    ):
        read_rows(spec + "?prompt=question&response=answr", "demonstration")


def test_splits_are_named_when_ambiguous_or_wrong(tmp_path):
    spec = write_dataset("saved_dict", DEMOS, tmp_path)
    base = spec.split("?")[0]
    with pytest.raises(DataError, match="field 'split': the dataset has splits train, other: name one"):
        read_rows(base, "demonstration")
    with pytest.raises(DataError, match="field 'split': no split 'test'; the dataset has train, other"):
        read_rows(base + "?split=test", "demonstration")
    saved = write_dataset("saved", DEMOS, tmp_path / "single")
    with pytest.raises(DataError, match="has no splits: drop split"):
        read_rows(saved + "?split=train", "demonstration")


def test_an_offline_hub_name_fails_fast_and_clearly():
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        read_rows("hf:nobody-here/no-such-dataset?split=train", "prompt")
    assert time.monotonic() - start < 60
    message = str(err.value)
    assert message.startswith("hf:nobody-here/no-such-dataset: no such local file or folder")
    assert "Hugging Face Hub" in message and "\n" not in message


def test_a_folder_without_hf_prefix_says_how_to_read_it(tmp_path):
    spec = write_dataset("saved", DEMOS, tmp_path)
    folder = spec.removeprefix("hf:")
    with pytest.raises(DataError, match=f"is read as hf:{folder}"):
        read_rows(folder, "demonstration")


def test_missing_datasets_package_is_one_line_naming_the_install(tmp_path, monkeypatch):
    spec = write_dataset("saved", DEMOS, tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError) as err:
        read_rows(spec, "demonstration")
    assert "pip install 'lit-rlhf[data]'" in str(err.value) and "\n" not in str(err.value)


def test_a_mapping_on_a_plain_file_keeps_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [*QA[:1], {"question": "x =", "answer": 3}])
    rows, _ = read_rows(
        DataSource(str(path), columns={"prompt": "question", "response": "answer"}), "demonstration", "skip"
    )
    assert plain(rows) == DEMOS[:1]
    with pytest.raises(DataError, match=r"qa.jsonl:2: field 'answer': expected a string, got integer"):
        read_rows(f"hf:{path}?prompt=question&response=answer", "demonstration")


# ---------------------------------------------------------------------------------------------------------
# Training from a dataset folder
# ---------------------------------------------------------------------------------------------------------


def test_sft_from_a_dataset_folder_trains_on_the_same_batches_as_the_jsonl_file(tiny_dir, tmp_path):
    """Two optimizer steps of SFT on the tiny model: same batches, same losses, from JSONL and from datasets."""
    import lightning as L
    import torch

    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.data.sft import SFTDataModule
    from lit_rlhf.stages.common import OptimConfig, SampleConfig
    from lit_rlhf.stages.sft import SFTModule

    qa = [{"question": f"{a} {b} =", "answer": f"{b} {a}"} for a in "abcd" for b in "efgh"]
    jsonl = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": r["question"], "response": r["answer"]} for r in qa]
    )
    folder = write_dataset("saved_dict", qa, tmp_path / "hf")

    class Record(L.Callback):
        def __init__(self) -> None:
            self.batches, self.losses = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.batches.append({k: v.clone() for k, v in batch.items() if torch.is_tensor(v)})
            self.losses.append(float(outputs["loss"]))

    def run(path) -> Record:
        torch.manual_seed(0)
        module = SFTModule(
            backbone=BackboneConfig(name_or_path=str(tiny_dir / "gpt2")),
            optim=OptimConfig(lr=1e-2, warmup_steps=0),
            samples=SampleConfig(every_n_steps=0),
        )
        record = Record()
        L.Trainer(
            max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path,
        ).fit(module, SFTDataModule(path, batch_size=4, max_length=16, seed=3))  # fmt: skip
        return record

    from_file = run(str(jsonl))
    from_dataset = run(DataSource.parse(folder + "&prompt=question&response=answer"))
    assert len(from_file.batches) == 2
    for a, b in zip(from_file.batches, from_dataset.batches, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert from_file.losses == from_dataset.losses


def test_reward_and_ppo_data_modules_read_datasets(tiny_dir, tmp_path):
    """The comparison (with rule rows) and PPO data modules take DataSources and hf: strings like file paths."""
    from transformers import AutoTokenizer

    from lit_rlhf.data.comparisons import ComparisonDataModule
    from lit_rlhf.data.prompts import PPODataModule

    tok = AutoTokenizer.from_pretrained(str(tiny_dir / "tokenizer"))
    jsonl = write_jsonl(tmp_path / "c.jsonl", KWISE)
    rules = [
        {"prompt": "a =", "response": "a", "rules": {"tone": True}},
        {"prompt": "b =", "response": "b", "rules": {"tone": False}},
    ]
    dm = ComparisonDataModule(
        DataSource.parse(write_dataset("saved_dict", HH, tmp_path / "hh")),
        val_path=str(jsonl),
        rules_train_path=write_dataset("parquet_folder", rules, tmp_path / "r"),
        tokenizer=tok,
        max_length=48,
        unknown_tokens_error=1.0,  # the word-level test tokenizer knows no "user:" of the plain chat rendering
    )
    dm.setup("fit")
    assert [e.responses for e in dm.data["train"]] == [("b a", "a b"), ("c", "c c")]
    assert dm.rule_names == ["tone"] and dm.reports["train"].path.endswith("[train]")
    assert dm.hparams["train_path"].startswith("hf:") and dm.hparams["val_path"] == str(jsonl)
    texts = [{"body": f"{a} {b}"} for a in "abc" for b in "de"]
    ppo = PPODataModule(
        write_dataset("jsonl_folder", DEMOS, tmp_path / "p"),
        pretrain_path=DataSource(write_dataset("saved", texts, tmp_path / "t")[3:], columns={"text": "body"}),
        batch_size=2,
        ptx_holdout=2,
        tokenizer=tok,
    )
    ppo.setup("fit")
    assert ppo.prompts == [d["prompt"] for d in DEMOS] and len(ppo.ptx_train) == 4 and len(ppo.ptx_eval) == 2
