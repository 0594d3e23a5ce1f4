"""The SMS spam data (chapter 6): labelled texts, balanced classes, splits and a padded dataset.

The SMS Spam Collection ships with the package (CC BY 4.0, see ``assets/README.md``).
``load_sms_spam`` reads ``label<TAB>text`` lines, ``balance_classes`` undersamples every class to
the smallest, ``split_records`` cuts any list into disjoint train/validation/test parts (chapter 7
splits its instructions with it too), and ``SpamDataset`` pads token ids to one length with
``<|endoftext|>``, remembering each text's real length. Exports ``SPAM_LABELS``,
``LabeledText``, ``Splits``, ``load_sms_spam``, ``balance_classes``, ``split_records``,
``spam_splits`` and ``SpamDataset``.

Every line is one message: 5,574 (4,827 ham, 747 spam), as the collection's authors count them.
The book reads the file with ``pandas.read_csv(sep="\t")``, whose quote handling reads the
message on line 5,082, which opens with ``"``, as a quoted field running on through the next two
lines: 5,572 rows, 4,825 ham. The spam
count is the same, so the balanced set has the book's size (747 + 747); which 747 ham messages
are drawn differs.

>>> splits = spam_splits()  # balanced 747 ham + 747 spam, then 70/10/20
>>> [len(part) for part in splits]
[1045, 149, 300]
>>> splits.train[0].label in (0, 1)
True
>>> SpamDataset([("Win cash now", 1), ("hi", 0)])[1]
(tensor([ 5303, 50256, 50256]), tensor(0), tensor(1))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import torch
from torch.utils.data import Dataset

from ..machinery.checks import (
    check_bool,
    check_float,
    check_instance,
    check_int,
    type_error,
    value_error,
)
from ..machinery.resources import resource_path
from ..tokenizers import gpt2_tokenizer

__all__ = [
    "SPAM_LABELS",
    "LabeledText",
    "Splits",
    "load_sms_spam",
    "balance_classes",
    "split_records",
    "spam_splits",
    "SpamDataset",
]

SPAM_LABELS = ("ham", "spam")
ENDOFTEXT_ID = 50256

T = TypeVar("T")


class LabeledText(NamedTuple):
    """A text and its class index (0 = ham, 1 = spam for the SMS collection)."""

    text: str
    label: int


class Splits(NamedTuple):
    """Disjoint train, validation and test parts of one data set."""

    train: list
    validation: list
    test: list


def load_sms_spam(
    path: str | os.PathLike | None = None, labels: Sequence[str] = SPAM_LABELS
) -> list[LabeledText]:
    """``label<TAB>text`` lines (the bundled SMS Spam Collection by default) as ``LabeledText``."""
    path = resource_path("sms-spam-collection.tsv") if path is None else path
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike) or None")
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels or not all(
            isinstance(label, str) for label in labels):
        raise type_error("labels", f"labels must be a non-empty sequence of class names (str), "
                                   f"got {labels!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no label<TAB>text file at {os.fspath(path)!r}")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            label, tab, text = line.partition("\t")
            if not tab:
                raise value_error("path", f"path: line {number} of {os.fspath(path)!r} has no "
                                          f"TAB")
            if label not in labels:
                raise value_error("path", f"path: label on line {number} of "
                                          f"{os.fspath(path)!r} must be one of {tuple(labels)}, "
                                          f"got {label!r}")
            records.append(LabeledText(text, list(labels).index(label)))
    if not records:
        raise value_error("path", f"path: {os.fspath(path)!r} holds no records")
    return records


def balance_classes(records: Sequence[LabeledText], seed: int = 123) -> list[LabeledText]:
    """Undersample every class to the size of the smallest, choosing with ``seed``.

    The kept records stay in their original order.
    """
    check_int("seed", seed, low=0)
    _check_sequence(records)
    by_label: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        label = getattr(record, "label", None)
        if isinstance(label, bool) or not isinstance(label, int):
            raise type_error("records", f"records must be LabeledText (text, int label), got "
                                        f"{record!r} at records[{index}]")
        by_label.setdefault(label, []).append(index)
    if not by_label:
        raise value_error("records", "records must hold at least one record, got none")
    size = min(len(indices) for indices in by_label.values())
    g = torch.Generator().manual_seed(seed)
    kept: list[int] = []
    for label in sorted(by_label):
        indices = by_label[label]
        chosen = torch.randperm(len(indices), generator=g)[:size]
        kept.extend(indices[i] for i in chosen.tolist())
    return [records[i] for i in sorted(kept)]


def split_records(
    records: Sequence[T], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 123
) -> Splits:
    """Shuffle with ``seed`` and cut into train, validation and test by ``fractions``.

    Train gets ``int(n * fractions[0])`` records, validation ``int(n * fractions[1])`` and test
    the rest, so the three parts are disjoint and together hold every record.
    """
    check_int("seed", seed, low=0)
    _check_sequence(records)
    if isinstance(fractions, str) or not isinstance(fractions, Sequence):
        raise type_error("fractions", f"fractions must be three numbers in [0, 1], got "
                                      f"{fractions!r}")
    if len(fractions) != 3:
        raise value_error("fractions", f"fractions must be three numbers in [0, 1], got "
                                       f"{tuple(fractions)}")
    for fraction in fractions:
        check_float("fractions", fraction, low=0, high=1)
    if abs(sum(fractions) - 1) > 1e-9:
        raise value_error("fractions", f"fractions must sum to 1, got {tuple(fractions)} (sum "
                                       f"{sum(fractions)})")
    n = len(records)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [records[i] for i in order]
    train_end = int(n * fractions[0])
    validation_end = train_end + int(n * fractions[1])
    return Splits(
        shuffled[:train_end], shuffled[train_end:validation_end], shuffled[validation_end:]
    )


def _check_sequence(records: object) -> None:
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise type_error("records", f"records must be a sequence, got {type(records).__name__}")


def spam_splits(
    path: str | os.PathLike | None = None, seed: int = 123, balance: bool = True
) -> Splits:
    """The SMS collection, balanced by undersampling ham (by default), split 70/10/20."""
    check_int("seed", seed, low=0)
    check_bool("balance", balance)
    records = load_sms_spam(path)
    if balance:
        records = balance_classes(records, seed=seed)
    return split_records(records, (0.7, 0.1, 0.2), seed=seed)


class SpamDataset(Dataset):
    """Texts tokenized, cut to ``max_length`` and padded to it with ``pad_token_id``.

    ``max_length`` defaults to the longest text. Items are ``(input_ids, label, length)``:
    ``length`` counts the real tokens, so the classifier can read the last one. ``pad_token_id``
    is GPT-2's ``<|endoftext|>`` by default: pass the tokenizer's ``eot_token`` for another.
    """

    def __init__(
        self,
        records: Sequence[tuple[str, int]],
        tokenizer=None,
        max_length: int | None = None,
        pad_token_id: int = ENDOFTEXT_ID,
        num_classes: int = len(SPAM_LABELS),
    ) -> None:
        check_int("max_length", max_length, low=1, optional=True)
        check_int("num_classes", num_classes, low=1)
        tokenizer = gpt2_tokenizer() if tokenizer is None else tokenizer
        if not callable(getattr(tokenizer, "encode", None)):
            raise type_error("tokenizer", f"tokenizer must have an encode(text) method, got "
                                          f"{type(tokenizer).__name__}")
        vocab = getattr(tokenizer, "n_vocab", None)
        check_int("pad_token_id", pad_token_id, low=0, high=None if vocab is None else vocab - 1)
        _check_sequence(records)
        if not records:
            raise value_error("records", "records must hold at least one record, got none")
        for i, record in enumerate(records):
            if not isinstance(record, Sequence) or isinstance(record, str) or len(record) != 2:
                raise type_error("records", f"records must hold (text, label) pairs, got "
                                            f"{record!r} at records[{i}]")
            text, label = record
            if not isinstance(text, str) or not text:
                raise (value_error if isinstance(text, str) else type_error)(
                    "records", f"text of records[{i}] must be a non-empty str, got {text!r}")
            if isinstance(label, bool) or not isinstance(label, int):
                raise type_error("records", f"label of records[{i}] must be an int class index, "
                                            f"got {label!r}")
            if not 0 <= label < num_classes:
                raise value_error("records", f"label of records[{i}] must be in [0, "
                                             f"{num_classes}), got {label}")
        encoded, labels = [], []
        for i, (text, label) in enumerate(records):
            ids = tokenizer.encode(text)
            if not ids:
                raise value_error("records", f"text of records[{i}] must hold at least one token, "
                                             f"got {text!r}")
            encoded.append(ids)
            labels.append(label)
        self.max_length = max(map(len, encoded)) if max_length is None else max_length
        self.lengths = torch.tensor([min(len(ids), self.max_length) for ids in encoded])
        self.input_ids = torch.full((len(encoded), self.max_length), pad_token_id)
        for row, ids in enumerate(encoded):
            ids = ids[: self.max_length]
            self.input_ids[row, : len(ids)] = torch.tensor(ids)
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.input_ids[index], self.labels[index], self.lengths[index]
