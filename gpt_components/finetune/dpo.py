"""Preference tuning with DPO (the book's chapter-7 bonus): prefer the chosen answer.

Direct preference optimisation trains a policy (the instruction-finetuned model) against a
frozen copy of itself, the reference. For each pair it raises how much more likely the policy
finds the chosen response than the reference does, relative to the rejected one:
``loss = -logsigmoid(beta * ((pc - pr) - (rc - rr)))`` with ``pc``/``pr`` the policy's mean
log-probabilities of the chosen/rejected response and ``rc``/``rr`` the reference's. Only
``model(idx) -> logits`` is asked of either model, so every model family (and LoRA) trains alike.

Exports ``load_preference_data`` (the bundled 1,100 pairs or a JSON file of your own),
``preference_splits`` (the instruction records' 85/5/10 split), ``PreferenceDataset``,
``preference_collate`` (the book's ``custom_collate_fn``), ``compute_logprobs``,
``compute_dpo_loss``, ``compute_dpo_loss_batch``, ``DPOScores``, ``compute_dpo_loss_loader``,
``evaluate_dpo_loss_loader``, ``train_model_dpo_simple`` and ``plot_dpo``.

>>> import torch
>>> batch = preference_collate([{"prompt": [1, 2], "chosen": [1, 2, 3, 4], "rejected": [1, 2, 5]}])
>>> batch["chosen"].tolist(), batch["chosen_mask"].tolist()  # the response only, never padding
([[1, 2, 3, 4]], [[False, False, True, True]])
>>> batch["rejected"].tolist(), batch["rejected_mask"].tolist()
([[1, 2, 5, 50256]], [[False, False, True, False]])
>>> x = torch.tensor([-2.0, -3.0])
>>> loss, chosen_reward, rejected_reward = compute_dpo_loss(x, x - 1, x, x - 1)
>>> round(loss.item(), 4), chosen_reward.item()  # policy == reference: log 2, no reward
(0.6931, 0.0)
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ..machinery.checks import (
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_records,
    check_tensor,
    check_token_ids,
    type_error,
    value_error,
)
from ..tokenizers import gpt2_tokenizer
from .instructions import ENDOFTEXT_ID, format_input, instruction_splits, load_instruction_data
from .loop import finetune_loop
from .spam_data import Splits

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.figure import Figure

__all__ = [
    "load_preference_data",
    "preference_splits",
    "PreferenceDataset",
    "preference_collate",
    "compute_logprobs",
    "compute_dpo_loss",
    "compute_dpo_loss_batch",
    "DPOScores",
    "compute_dpo_loss_loader",
    "evaluate_dpo_loss_loader",
    "train_model_dpo_simple",
    "plot_dpo",
]

RESPONSE_HEADER = "\n\n### Response:\n"


def _check_pair(entry: Any, where: str, parameter: str) -> None:
    if not isinstance(entry, Mapping):
        raise type_error(parameter, f"{where} must be a mapping with 'instruction', 'chosen' and "
                                    f"'rejected', got {entry!r}")
    for key in ("instruction", "chosen", "rejected"):
        if key not in entry:
            raise value_error(parameter, f"{where} has no {key!r} field: {dict(entry)!r}")
    for key in ("instruction", "input", "chosen", "rejected"):
        if key in entry and not isinstance(entry[key], str):
            raise type_error(parameter, f"{where}[{key!r}] must be a string, got {entry[key]!r}")


def load_preference_data(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Instruction records with a ``chosen`` and a ``rejected`` response each, from a JSON list.

    The bundled ``instruction-data-with-preference.json`` by default: the 1,100 instruction
    records, each with a polite (chosen) and an impolite (rejected) answer.
    """
    from ..machinery.resources import resource_path

    path = resource_path("instruction-data-with-preference.json") if path is None else path
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike) or None")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no preference file at {os.fspath(path)!r}")
    data = load_instruction_data(path)
    for i, entry in enumerate(data):
        _check_pair(entry, f"record {i} of path {os.fspath(path)!r}", "path")
    return data


def preference_splits(data: Sequence[Mapping[str, str]] | None = None, seed: int = 123) -> Splits:
    """85% train, 5% validation, 10% test, shuffled with ``seed``: ``instruction_splits``' cut.

    The bundled pairs are the bundled instruction records in the same order, so with the same
    seed both stages share one test split.
    """
    if data is not None:
        _check_pairs(data)
    return instruction_splits(load_preference_data() if data is None else data, seed=seed)


def _check_pairs(data: Any, empty: bool = False) -> list:
    return check_records("data", data, _check_pair, "preference records", empty=empty)


class PreferenceDataset(Dataset):
    """Pairs tokenized once; items are dicts of token ids ``prompt``, ``chosen``, ``rejected``.

    ``prompt`` is everything the model reads before answering (the Alpaca prompt and the
    ``### Response:`` header); ``chosen`` and ``rejected`` are the prompt followed by that
    response. The prompt and each response are encoded separately, so both sequences start
    with exactly the prompt's tokens and the response tokens are exactly the response's text.
    """

    def __init__(self, data: Sequence[Mapping[str, str]], tokenizer=None) -> None:
        tokenizer = gpt2_tokenizer() if tokenizer is None else tokenizer
        if not callable(getattr(tokenizer, "encode", None)):
            raise type_error("tokenizer", f"tokenizer must have an encode(text) method, got "
                                          f"{type(tokenizer).__name__}")
        self.data = _check_pairs(data, empty=True)
        self.encoded_texts: list[dict[str, list[int]]] = []
        for entry in self.data:
            # format_input checks for the "output" field it does not use
            prompt = tokenizer.encode(format_input({"output": "", **entry}) + RESPONSE_HEADER)
            self.encoded_texts.append({
                "prompt": prompt,
                "chosen": prompt + tokenizer.encode(entry["chosen"]),
                "rejected": prompt + tokenizer.encode(entry["rejected"]),
            })

    def __len__(self) -> int:
        return len(self.encoded_texts)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.encoded_texts[index]


def _check_item(item: Any, row: int) -> None:
    if not isinstance(item, Mapping) or not all(k in item for k in ("prompt", "chosen",
                                                                     "rejected")):
        raise type_error("batch", f"batch items must be mappings of 'prompt', 'chosen' and "
                                  f"'rejected' token ids (PreferenceDataset items), got {item!r} "
                                  f"at batch[{row}]")
    for key in ("prompt", "chosen", "rejected"):
        ids = item[key]
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist() if ids.dim() == 1 and not ids.is_floating_point() else None
        if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise type_error("batch", f"batch[{row}][{key!r}] must be a list of int token ids, "
                                      f"got {item[key]!r}")
    prompt = list(item["prompt"])
    for key in ("chosen", "rejected"):
        if list(item[key][: len(prompt)]) != prompt:
            raise value_error("batch", f"batch[{row}][{key!r}] must begin with its prompt's "
                                       f"{len(prompt)} tokens")


def preference_collate(
    batch: Sequence[Mapping[str, Sequence[int]]],
    pad_token_id: int = ENDOFTEXT_ID,
    allowed_max_length: int | None = None,
    mask_prompt_tokens: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Pad a batch of pairs to one width; masks select the tokens whose log-probability counts.

    Returns ``chosen`` and ``rejected`` (batch, width) int64, padded with ``pad_token_id`` to
    the longest of either; ``chosen_mask`` and ``rejected_mask`` (batch, width) bool, True on
    the response tokens (and the prompt's too unless ``mask_prompt_tokens``), never on padding;
    and ``prompt``, the list of prompt tensors. Rows are cut to ``allowed_max_length``.
    ``pad_token_id`` is GPT-2's ``<|endoftext|>`` by default: pass your tokenizer's
    ``eot_token`` for any other vocabulary. (The book's ``custom_collate_fn`` masks two tokens
    past the prompt; here the prompt includes the ``### Response:`` header, so the mask covers
    exactly the answer.)
    """
    if isinstance(batch, (str, Mapping)) or not isinstance(batch, Sequence):
        raise type_error("batch", f"batch must be a sequence of PreferenceDataset items, got "
                                  f"{type(batch).__name__}")
    if len(batch) == 0:
        raise value_error("batch", "batch must hold at least one pair, got an empty batch")
    check_int("pad_token_id", pad_token_id, low=0)
    check_int("allowed_max_length", allowed_max_length, low=1, optional=True)
    check_bool("mask_prompt_tokens", mask_prompt_tokens)
    for row, item in enumerate(batch):
        _check_item(item, row)
    width = max(len(item[key]) for item in batch for key in ("chosen", "rejected"))
    out: dict[str, Any] = {"prompt": [torch.tensor(list(item["prompt"]), dtype=torch.long,
                                                   device=device) for item in batch]}
    for key in ("chosen", "rejected"):
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, item in enumerate(batch):
            sequence = list(item[key])
            ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            start = len(item["prompt"]) if mask_prompt_tokens else 0
            mask[row, start: len(sequence)] = True
        out[key] = ids[:, :allowed_max_length].to(device)
        out[f"{key}_mask"] = mask[:, :allowed_max_length].to(device)
    return out


def compute_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                     selection_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's mean log-probability of its selected labels: (batch,).

    ``logits`` (batch, T, vocab) are the model's outputs for the sequence ``labels`` (batch, T)
    itself: token t is scored by the logits at t - 1, so token 0 never is. ``selection_mask``
    (batch, T) picks the tokens to average (all of 1 .. T-1 without one); a row with none
    selected (its response cut off by ``allowed_max_length``) scores 0 and adds no gradient.
    """
    check_tensor("logits", logits, kind="floating")
    if logits.ndim != 3:
        raise value_error("logits", f"logits must be (batch, tokens, vocab), got shape "
                                    f"{tuple(logits.shape)}")
    check_tensor("labels", labels, kind="integer")
    if labels.shape != logits.shape[:2] or labels.shape[1] < 2:
        raise value_error("labels", f"labels must have shape {tuple(logits.shape[:2])} (batch, "
                                    f"tokens >= 2), got {tuple(labels.shape)}")
    check_token_ids(labels, logits.shape[-1], name="labels")
    if selection_mask is not None:
        check_tensor("selection_mask", selection_mask)
        if selection_mask.is_floating_point() or selection_mask.is_complex():
            raise type_error("selection_mask", f"selection_mask must hold bools (or 0/1 ints), "
                                               f"got dtype {selection_mask.dtype}")
        if selection_mask.shape != labels.shape:
            raise value_error("selection_mask", f"selection_mask must have the labels' shape "
                                                f"{tuple(labels.shape)}, got "
                                                f"{tuple(selection_mask.shape)}")
    log_probs = F.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): predictions of 1 .. T-1
    selected = log_probs.gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    if selection_mask is None:
        return selected.mean(-1)
    mask = selection_mask[:, 1:].bool()
    total = torch.where(mask, selected, torch.zeros_like(selected)).sum(-1)
    return total / mask.sum(-1).clamp(min=1)


def _check_beta(beta: float) -> None:
    check_float("beta", beta, low=0, low_open=True)


def _check_models(policy_model: Any, reference_model: Any) -> None:
    """Both models must be modules of one kind over one vocabulary: DPO compares their
    log-probabilities of the same token ids."""
    check_instance("policy_model", policy_model, nn.Module, "an nn.Module (model(idx) -> logits)")
    check_instance("reference_model", reference_model, nn.Module,
                   "an nn.Module (model(idx) -> logits)")
    if next(policy_model.parameters(), None) is None:
        raise value_error("policy_model", "policy_model must have parameters, got none")
    policy_cfg, reference_cfg = (getattr(m, "cfg", None) for m in (policy_model, reference_model))
    kinds = [type(policy_model).__name__, type(reference_model).__name__]
    if policy_cfg is not None and reference_cfg is not None:
        kinds = [getattr(c, "family", type(c).__name__) for c in (policy_cfg, reference_cfg)]
    if kinds[0] != kinds[1]:
        raise value_error("reference_model", f"reference_model must be a copy of the policy, a "
                                             f"{kinds[0]}, got a {kinds[1]}")
    vocab = [getattr(c, "vocab_size", None) for c in (policy_cfg, reference_cfg)]
    if None not in vocab and vocab[0] != vocab[1]:
        raise value_error("reference_model", f"reference_model must share the policy's "
                                             f"vocabulary (vocab_size={vocab[0]}), got "
                                             f"vocab_size={vocab[1]}")


def _check_batch(batch: Any) -> None:
    """A ``preference_collate`` batch: chosen/rejected ids and their masks, one shape each."""
    if not isinstance(batch, Mapping):
        raise type_error("batch", f"batch must be a preference_collate dict, got "
                                  f"{type(batch).__name__}")
    missing = [k for k in ("chosen", "rejected", "chosen_mask", "rejected_mask") if k not in batch]
    if missing:
        raise value_error("batch", f"batch must hold {', '.join(missing)} (a preference_collate "
                                   f"batch), got keys {sorted(map(str, batch))}")
    for key in ("chosen", "rejected"):
        check_tensor("batch", batch[key], kind="integer", dims=2)
        mask = batch[f"{key}_mask"]
        if not isinstance(mask, torch.Tensor) or mask.shape != batch[key].shape:
            raise value_error("batch", f"batch[{key + '_mask'!r}] must be a tensor of "
                                       f"batch[{key!r}]'s shape {tuple(batch[key].shape)}")
    if batch["chosen"].shape != batch["rejected"].shape:
        raise value_error("batch", f"batch['chosen'] and batch['rejected'] must share one shape, "
                                   f"got {tuple(batch['chosen'].shape)} and "
                                   f"{tuple(batch['rejected'].shape)}")


def _pair_terms(model_chosen_logprobs: torch.Tensor, model_rejected_logprobs: torch.Tensor,
                reference_chosen_logprobs: torch.Tensor,
                reference_rejected_logprobs: torch.Tensor, beta: float):
    """Per-pair losses, chosen rewards and rejected rewards (the rewards without gradient)."""
    _check_beta(beta)
    check_tensor("model_chosen_logprobs", model_chosen_logprobs, kind="floating")
    named = {"model_rejected_logprobs": model_rejected_logprobs,
             "reference_chosen_logprobs": reference_chosen_logprobs,
             "reference_rejected_logprobs": reference_rejected_logprobs}
    for name, value in named.items():
        check_tensor(name, value, kind="floating")
        if value.shape != model_chosen_logprobs.shape:
            raise value_error(name, f"{name} must have model_chosen_logprobs' shape "
                                    f"{tuple(model_chosen_logprobs.shape)}, got "
                                    f"{tuple(value.shape)}")
    model_logratios = model_chosen_logprobs - model_rejected_logprobs
    reference_logratios = reference_chosen_logprobs - reference_rejected_logprobs
    losses = -F.logsigmoid(beta * (model_logratios - reference_logratios))
    chosen_rewards = (model_chosen_logprobs - reference_chosen_logprobs).detach()
    rejected_rewards = (model_rejected_logprobs - reference_rejected_logprobs).detach()
    return losses, chosen_rewards, rejected_rewards


def compute_dpo_loss(
    model_chosen_logprobs: torch.Tensor,
    model_rejected_logprobs: torch.Tensor,
    reference_chosen_logprobs: torch.Tensor,
    reference_rejected_logprobs: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean DPO loss over the pairs, and the mean chosen and rejected rewards.

    A reward is the policy's log-probability minus the reference's, as in the book (without
    the factor ``beta`` some libraries include). A policy equal to its reference has loss
    exactly ``log 2`` and both rewards 0.
    """
    losses, chosen, rejected = _pair_terms(model_chosen_logprobs, model_rejected_logprobs,
                                           reference_chosen_logprobs,
                                           reference_rejected_logprobs, beta)
    return losses.mean(), chosen.mean(), rejected.mean()


def _batch_logprobs(model: nn.Module, batch: Mapping[str, torch.Tensor]):
    """The chosen and rejected rows' mean response log-probabilities, from one forward pass."""
    ids = torch.cat([batch["chosen"], batch["rejected"]])  # (2B, T): both share the width
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    return compute_logprobs(model(ids), ids, mask).chunk(2)


def _batch_terms(batch: Mapping[str, torch.Tensor], policy_model: nn.Module,
                 reference_model: nn.Module, beta: float):
    _check_beta(beta)
    _check_batch(batch)
    policy_chosen, policy_rejected = _batch_logprobs(policy_model, batch)
    with torch.no_grad():  # the reference only scores: it never receives a gradient
        reference_chosen, reference_rejected = _batch_logprobs(reference_model, batch)
    return _pair_terms(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


def compute_dpo_loss_batch(
    batch: Mapping[str, torch.Tensor], policy_model: nn.Module, reference_model: nn.Module,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``compute_dpo_loss`` of a ``preference_collate`` batch: (loss, chosen, rejected reward).

    The reference model is run without gradient, whatever its parameters' ``requires_grad``.
    """
    _check_models(policy_model, reference_model)
    losses, chosen, rejected = _batch_terms(batch, policy_model, reference_model, beta)
    return losses.mean(), chosen.mean(), rejected.mean()


class DPOScores(NamedTuple):
    """Means over the pairs of a loader; ``reward_accuracy`` is the share with chosen > rejected."""

    loss: float
    chosen_reward: float
    rejected_reward: float
    reward_accuracy: float

    @property
    def reward_margin(self) -> float:
        return self.chosen_reward - self.rejected_reward


def _on_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def compute_dpo_loss_loader(
    data_loader: Iterable[Mapping[str, torch.Tensor]], policy_model: nn.Module,
    reference_model: nn.Module, beta: float = 0.1, num_batches: int | None = None,
) -> DPOScores:
    """Loss, rewards and reward accuracy over the first ``num_batches`` batches (all without).

    Every pair counts once (the book averages per-batch means: the same when batches are equal
    in size). Runs without gradient; batches move to the policy's device.
    """
    _check_beta(beta)
    check_int("num_batches", num_batches, low=1, optional=True)
    _check_models(policy_model, reference_model)
    device = next(policy_model.parameters()).device
    losses, chosen, rejected = [], [], []
    with torch.no_grad():
        for batch in itertools.islice(data_loader, num_batches):
            terms = _batch_terms(_on_device(batch, device), policy_model, reference_model, beta)
            for kept, values in zip((losses, chosen, rejected), terms, strict=True):
                kept.append(values.double().cpu())
    if not losses:
        raise value_error("data_loader", "data_loader must hold at least one batch, got none")
    chosen_all, rejected_all = torch.cat(chosen), torch.cat(rejected)
    return DPOScores(torch.cat(losses).mean().item(), chosen_all.mean().item(),
                     rejected_all.mean().item(),
                     (chosen_all > rejected_all).double().mean().item())


def evaluate_dpo_loss_loader(
    policy_model: nn.Module, reference_model: nn.Module, train_loader: Iterable,
    val_loader: Iterable, beta: float, eval_iter: int,
) -> dict[str, float]:
    """``train_`` and ``val_`` loss, chosen/rejected reward, reward margin and accuracy.

    Over ``eval_iter`` batches of each loader, with the policy in eval mode (its mode is
    restored afterwards).
    """
    _check_beta(beta)
    check_int("eval_iter", eval_iter, low=1)
    _check_models(policy_model, reference_model)
    was_training = policy_model.training
    policy_model.eval()
    results: dict[str, float] = {}
    try:
        for split, loader in (("train", train_loader), ("val", val_loader)):
            scores = compute_dpo_loss_loader(loader, policy_model, reference_model, beta,
                                             eval_iter)
            results |= {f"{split}_loss": scores.loss,
                        f"{split}_chosen_reward": scores.chosen_reward,
                        f"{split}_rejected_reward": scores.rejected_reward,
                        f"{split}_reward_margin": scores.reward_margin,
                        f"{split}_reward_accuracy": scores.reward_accuracy}
    finally:
        policy_model.train(was_training)
    return results


def train_model_dpo_simple(
    policy_model: nn.Module,
    reference_model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    num_epochs: int = 1,
    beta: float = 0.1,
    eval_freq: int = 5,
    eval_iter: int = 5,
    grad_clip: float | None = None,
    seed: int | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The book's DPO loop, on the project's ``finetune_loop``: the policy learns, the reference
    only scores.

    Batches come from ``preference_collate``. Returns one record per step (``epoch``, ``step``,
    ``tokens_seen``, ``loss``); every ``eval_freq`` steps and at each epoch's end it also holds
    ``evaluate_dpo_loss_loader``'s train and validation loss, rewards, reward margin and reward
    accuracy over ``eval_iter`` batches. The reference is put in eval mode and never changes.
    With ``seed``, dropout draws from a generator seeded with it.
    """
    _check_beta(beta)
    check_int("num_epochs", num_epochs, low=1)
    check_int("eval_freq", eval_freq, low=1)
    check_int("eval_iter", eval_iter, low=1)
    check_float("grad_clip", grad_clip, low=0, low_open=True, optional=True)
    check_int("seed", seed, low=0, optional=True)
    _check_models(policy_model, reference_model)
    if reference_model is policy_model:
        raise value_error("reference_model", "reference_model must be a frozen copy of the "
                                             "policy (copy.deepcopy(policy_model)), not the "
                                             "policy itself")
    # Eval mode for the reference's dropout, with training's weight layout: it scores beside a
    # policy in training mode, so a policy equal to it gets its very log-probabilities.
    reference_model.decoding_layout = False
    reference_model.eval()

    def dpo_loss(model: nn.Module, batch: Mapping[str, Any], device: torch.device):
        return compute_dpo_loss_batch(_on_device(batch, device), model, reference_model, beta)[0]

    def scores() -> dict[str, float]:
        return evaluate_dpo_loss_loader(policy_model, reference_model, train_loader, val_loader,
                                        beta, eval_iter)

    return finetune_loop(policy_model, train_loader, optimizer, loss_fn=dpo_loss,
                         count=lambda batch: batch["chosen"].numel(), evaluate=scores,
                         device=device, num_epochs=num_epochs, eval_freq=eval_freq,
                         grad_clip=grad_clip, seed=seed, counted="tokens_seen",
                         on_record=on_record)


def plot_dpo(records: Iterable[dict], path: str | os.PathLike) -> Figure:
    """Draw the DPO loss and the reward margins against steps into ``path`` (PNG, Agg).

    Returns the matplotlib ``Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
    if isinstance(records, (str, Mapping)) or not isinstance(records, Iterable):
        raise type_error("records", f"records must be train_model_dpo_simple's list of dicts, "
                                    f"got {type(records).__name__}")
    records = list(records)
    if not records or not all(isinstance(r, Mapping) and {"step", "loss"} <= set(r)
                              for r in records):
        raise value_error("records", "records must be train_model_dpo_simple's records (dicts "
                                     "with step and loss), at least one")
    evals = [r for r in records if "val_loss" in r]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    loss_ax, margin_ax = fig.subplots(1, 2)
    loss_ax.plot([r["step"] for r in records], [r["loss"] for r in records], color="0.7",
                 label="train (each step)")
    for split, name, color in (("train", "train", "C0"), ("val", "validation", "C1")):
        steps = [r["step"] for r in evals]
        loss_ax.plot(steps, [r[f"{split}_loss"] for r in evals], "o-", color=color, label=name)
        margin_ax.plot(steps, [r[f"{split}_reward_margin"] for r in evals], "o-", color=color,
                       label=name)
    loss_ax.axhline(math.log(2), color="grey", linestyle=":", label="log 2 (start)")
    loss_ax.set(xlabel="step", ylabel="DPO loss")
    margin_ax.set(xlabel="step", ylabel="reward margin (chosen - rejected)")
    loss_ax.legend()
    margin_ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return fig
