"""Classification finetuning (chapter 6): a GPT that reads a text message and says spam or ham.

The model is a ``GPTModel`` whose output head maps to ``num_classes`` scores instead of the
vocabulary; the label is read at the *last real token* of each text (with causal attention that
position has seen the whole message, and padding after it cannot change it). Exports
``SPAM_LABELS``, ``LabeledText``, ``Splits``, ``load_sms_spam``, ``balance_classes``,
``split_records``, ``spam_splits``, ``SpamDataset``, ``make_classifier``, ``classifier_logits``,
``classification_loss``, ``classification_loss_loader``, ``classification_accuracy``,
``train_classifier`` and ``classify``.

>>> splits = spam_splits()  # balanced 747 ham + 747 spam, then 70/10/20
>>> [len(part) for part in splits]
[1045, 149, 300]
>>> splits.train[0].label in (0, 1)
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import torch

from ..resources import resource_path

__all__ = [
    "SPAM_LABELS",
    "LabeledText",
    "Splits",
    "load_sms_spam",
    "balance_classes",
    "split_records",
    "spam_splits",
]

SPAM_LABELS = ("ham", "spam")

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
                raise ValueError(f"path: line {number} of {os.fspath(path)!r} has no TAB")
            if label not in labels:
                raise ValueError(
                    f"label on line {number} of {os.fspath(path)!r} must be one of "
                    f"{tuple(labels)}, got {label!r}"
                )
            records.append(LabeledText(text, list(labels).index(label)))
    if not records:
        raise ValueError(f"path: {os.fspath(path)!r} holds no records")
    return records


def balance_classes(records: Sequence[LabeledText], seed: int = 123) -> list[LabeledText]:
    """Undersample every class to the size of the smallest, choosing with ``seed``.

    The kept records stay in their original order.
    """
    by_label: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        by_label.setdefault(record.label, []).append(index)
    if not by_label:
        raise ValueError("records must hold at least one record, got none")
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
    if len(fractions) != 3 or any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"fractions must be three numbers in [0, 1], got {tuple(fractions)}")
    if abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {tuple(fractions)} (sum {sum(fractions)})")
    n = len(records)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [records[i] for i in order]
    train_end = int(n * fractions[0])
    validation_end = train_end + int(n * fractions[1])
    return Splits(
        shuffled[:train_end], shuffled[train_end:validation_end], shuffled[validation_end:]
    )


def spam_splits(
    path: str | os.PathLike | None = None, seed: int = 123, balance: bool = True
) -> Splits:
    """The SMS collection, balanced by undersampling ham (by default), split 70/10/20."""
    records = load_sms_spam(path)
    if balance:
        records = balance_classes(records, seed=seed)
    return split_records(records, (0.7, 0.1, 0.2), seed=seed)
