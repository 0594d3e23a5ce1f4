"""The SMS spam data (chapter 6): balanced classes, disjoint splits, padded datasets."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt_components.finetune.spam_data import (
    SPAM_LABELS,
    LabeledText,
    SpamDataset,
    balance_classes,
    load_sms_spam,
    spam_splits,
    split_records,
)
from gpt_components.machinery.resources import resource_path
from gpt_components.tokenizers import gpt2_tokenizer
from spec.strategies import seeds

pytestmark = pytest.mark.ch06

EOT = 50256


@functools.cache
def _sms() -> list[LabeledText]:
    return load_sms_spam()


labelled = st.lists(st.integers(0, 2), min_size=1, max_size=60).map(
    lambda labels: [LabeledText(f"message {i}", label) for i, label in enumerate(labels)]
)


@given(labelled, seeds)
def test_balancing_keeps_every_class_at_the_size_of_the_smallest(records, seed):
    balanced = balance_classes(records, seed=seed)
    counts = Counter(r.label for r in records)
    assert Counter(r.label for r in balanced) == {label: min(counts.values()) for label in counts}
    assert len(set(balanced)) == len(balanced)
    assert set(balanced) <= set(records)


@given(labelled, seeds)
def test_splits_are_disjoint_and_cover_the_data_70_10_20(records, seed):
    train, validation, test = split_records(records, (0.7, 0.1, 0.2), seed=seed)
    n = len(records)
    assert (len(train), len(validation)) == (int(0.7 * n), int(0.1 * n))
    assert Counter(train + validation + test) == Counter(records)
    assert split_records(records, (0.7, 0.1, 0.2), seed=seed) == (train, validation, test)


def test_bundled_spam_splits_balance_747_messages_per_class():
    splits = spam_splits(seed=123)
    combined = splits.train + splits.validation + splits.test
    assert [len(part) for part in splits] == [1045, 149, 300]
    assert Counter(r.label for r in combined) == {0: 747, 1: 747}
    assert Counter(r.label for r in _sms()) == {0: 4827, 1: 747}
    assert all(r in set(_sms()) for r in combined)


def test_every_line_is_one_message_where_the_books_quote_handling_merges_three():
    # The book reads the file with pandas.read_csv(sep="\t"), whose default quoting (a field
    # that opens with '"' runs to the closing quote, across line ends) is the csv module's.
    import csv

    with open(resource_path("sms-spam-collection.tsv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert len(rows) == 5572 and Counter(label for label, _ in rows) == {"ham": 4825, "spam": 747}
    with open(resource_path("sms-spam-collection.tsv"), encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t", 1) for line in f]
    assert [(text, SPAM_LABELS.index(label)) for label, text in lines] == list(_sms())
    (merged,) = [text for _, text in rows if "\n" in text]
    assert merged.startswith("Keep ur problems") and merged.count("\nham\t") == 2  # line 5,082


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)


@given(st.lists(st.tuples(texts, st.integers(0, 1)), min_size=1, max_size=6),
       st.none() | st.integers(1, 12))
def test_dataset_pads_with_end_of_text_and_counts_the_real_tokens(records, max_length):
    tok = gpt2_tokenizer()
    encoded = [tok.encode(text) for text, _ in records]
    if any(not ids for ids in encoded):
        with pytest.raises(ValueError, match="text of record"):
            SpamDataset(records, max_length=max_length)
        return
    dataset = SpamDataset(records, max_length=max_length)
    width = max(map(len, encoded)) if max_length is None else max_length
    assert len(dataset) == len(records)
    for (_text, label), ids, (row, target, length) in zip(records, encoded, dataset, strict=True):
        kept = ids[:width]
        assert row.tolist() == kept + [EOT] * (width - len(kept))
        assert (int(target), int(length)) == (label, len(kept))


def test_a_file_label_outside_the_classes_is_rejected(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text("ham\thello\nmaybe\tfree money\n", encoding="utf-8")
    with pytest.raises(ValueError, match="label on line 2 .* got 'maybe'"):
        load_sms_spam(path)
    with pytest.raises(FileNotFoundError, match="path"):
        load_sms_spam(tmp_path / "missing.tsv")


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="max_length"):
        SpamDataset([("hi", 0)], max_length=0)
    with pytest.raises(ValueError, match="fractions"):
        split_records([1, 2], (0.5, 0.5, 0.5))
