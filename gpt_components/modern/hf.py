"""The modern decoder families' ``config.json``: the fields they share, and RoPE's spellings.

Every family gives an ``HFLayout`` (``machinery.pretrained``: the one mechanism that reads and
writes Hugging Face's layout, GPT-2's included): its ``model_type``, its architecture name, its
weight names (our module path -> theirs, ``{i}`` for the block index, ``{e}`` for an expert's;
``.weight``/``.bias`` carry over) and two functions between ``config.json`` and its config. The
modern families' ``config.json`` files share most of their fields (Llama's spelling):
``decoder_fields_from_hf`` and ``decoder_fields_to_hf`` read and write those, and a family
layers its own fields on top.

``rope_from_hf`` reads both spellings of RoPE settings: ``rope_parameters`` (transformers 5)
and ``rope_theta`` + ``rope_scaling`` (the published checkpoints).

>>> rope_from_hf({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
(1000000.0, None)
>>> rope_from_hf({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
...     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
...     "original_max_position_embeddings": 8192}})[1].factor
32.0
>>> from gpt_components.modern.llama import HF_LAYOUT
>>> HF_LAYOUT.hf_name("trf_blocks.3.ff.fc1.weight")
'model.layers.3.mlp.gate_proj.weight'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..machinery.checks import value_error
from .rope import Llama3RopeScaling, YarnRopeScaling

__all__ = ["rope_from_hf", "rope_to_hf", "decoder_fields_from_hf", "decoder_fields_to_hf"]


_YARN_OPTIONAL = ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                  "truncate")


def rope_from_hf(hf: Mapping[str, Any]
                 ) -> tuple[float, Llama3RopeScaling | YarnRopeScaling | None]:
    """``(rope_theta, rope_scaling)`` from either spelling of a config.json's RoPE settings."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope = scaling or params
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind == "yarn":
        factor = rope.get("factor")
        if factor is None:  # DeepSeek's spelling: the ratio of the two context lengths
            factor = hf["max_position_embeddings"] / rope["original_max_position_embeddings"]
        given = {key: rope[key] for key in _YARN_OPTIONAL if rope.get(key) is not None}
        for key in ("beta_fast", "beta_slow"):  # 0 in a config means the default, as in HF
            if not given.get(key, 1):
                given.pop(key)
        return float(theta), YarnRopeScaling(
            factor=float(factor),
            original_context_length=int(rope["original_max_position_embeddings"]),
            **{key: value if key == "truncate" else float(value)
               for key, value in given.items()})
    if kind != "llama3":
        raise value_error("config", f"config rope_type must be 'default', 'llama3' or 'yarn', "
                                    f"got {kind!r}")
    return float(theta), Llama3RopeScaling(
        factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_context_length=int(rope["original_max_position_embeddings"]))


def rope_to_hf(theta: float,
               scaling: Llama3RopeScaling | YarnRopeScaling | None) -> dict[str, Any]:
    """The published spelling (``rope_theta``, ``rope_scaling``), read by transformers 4 and 5."""
    if scaling is None:
        return {"rope_theta": theta, "rope_scaling": None}
    if isinstance(scaling, YarnRopeScaling):
        return {"rope_theta": theta, "rope_scaling": {
            "rope_type": "yarn", "factor": scaling.factor,
            "original_max_position_embeddings": scaling.original_context_length,
            **{key: getattr(scaling, key) for key in _YARN_OPTIONAL
               if getattr(scaling, key) is not None}}}
    return {"rope_theta": theta, "rope_scaling": {
        "rope_type": "llama3", "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor, "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_context_length}}


def decoder_fields_from_hf(hf: Mapping[str, Any], *, activation: str = "silu") -> dict[str, Any]:
    """The ``DecoderConfig`` fields of a Llama-style ``config.json`` (Llama, Qwen3, ...), whose
    gated feed-forward uses ``activation`` (Gemma's is ``gelu_pytorch_tanh``)."""
    act = hf.get("hidden_act") or hf.get("hidden_activation") or activation
    if act != activation:
        raise value_error("config", f"config hidden_act must be {activation!r}, got {act!r}")
    if hf.get("mlp_bias", False):
        raise value_error("config", "config mlp_bias must be false: the feed-forward has no "
                                    "biases")
    missing = [key for key in ("vocab_size", "max_position_embeddings", "hidden_size",
                               "num_hidden_layers", "num_attention_heads", "intermediate_size")
               if key not in hf]
    if missing:
        raise value_error("config", f"config must give {missing[0]!r} (and every size of the "
                                    "model)")
    n_heads = hf["num_attention_heads"]
    theta, scaling = rope_from_hf(hf)
    return {
        "vocab_size": hf["vocab_size"],
        "context_length": hf["max_position_embeddings"],
        "emb_dim": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // n_heads,
        "hidden_dim": hf["intermediate_size"],
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "attention_bias": bool(hf.get("attention_bias", False)),
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
        "drop_rate": float(hf.get("attention_dropout", 0.0) or 0.0),
    }


def decoder_fields_to_hf(cfg: Any, layout: Any, *,
                         activation: tuple[str, str] = ("hidden_act", "silu")) -> dict[str, Any]:
    """A Llama-style ``config.json`` for ``cfg`` in ``layout`` (an ``HFLayout``: its model type
    and architecture); ``activation``: the key and value of the feed-forward's activation."""
    return {
        "architectures": [layout.architecture],
        "model_type": layout.model_type,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "hidden_size": cfg.emb_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.hidden_dim,
        activation[0]: activation[1],
        "rms_norm_eps": cfg.norm_eps,
        **rope_to_hf(cfg.rope_theta, cfg.rope_scaling),
        "attention_bias": cfg.attention_bias,
        "mlp_bias": False,
        "attention_dropout": cfg.drop_rate,
        "tie_word_embeddings": cfg.tie_weights,
    }

