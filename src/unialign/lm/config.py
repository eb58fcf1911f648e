"""The configuration of ``unialign train lm``: offline preference training of a causal LM.

One flat, typed model; every field is documented once (its description is also the help text
of the matching ``--flag``). Validation runs before anything heavy is loaded: paths, the
objective name against :data:`unialign.losses.REGISTRY`, its hyperparameters (names *and*
values, by calling the objective once on a dummy batch), and the cross-field rules. Every
error names the field.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unialign.config import changed_fields
from unialign.losses import REGISTRY, LossSpec, PairedLogps, UnpairedLogps

__all__ = ["LMTrainConfig", "LM_LOSS_KINDS", "lm_loss_names"]

#: Objective kinds the offline LM loop can feed (paired with/without reference, unpaired).
LM_LOSS_KINDS = ("paired", "paired_ref_free", "unpaired")

#: Fields that only mean something with ``finetune: lora`` (every LM config has them).
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora_on_save")


def lm_loss_names() -> list[str]:
    """Registry names of the objectives this loop can train with."""
    return sorted(n for n, s in REGISTRY.items() if s.kind in LM_LOSS_KINDS)


def check_lora_fields(cfg: BaseModel) -> None:
    """LoRA fields changed from their defaults need ``finetune: lora`` (any LM config)."""
    if cfg.finetune != "lora" and (given := changed_fields(cfg, LORA_FIELDS)):
        raise ValueError(f"{', '.join(given)}: LoRA fields need finetune: lora")


def must_exist_locally(ref: str) -> bool:
    """False only for what can be a hub id (``org/name``) while the hub is not switched off."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return offline or ref.startswith(("/", ".", "~")) or ref.count("/") != 1


class LMTrainConfig(BaseModel):
    """Offline preference training of a causal LM (``unialign train lm``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # --- what to train, on what ------------------------------------------------------------
    model: str = Field(
        description="policy model: a local directory loadable with from_pretrained "
        "(a hub id only where the hub is reachable)"
    )
    tokenizer: str | None = Field(None, description="tokenizer path; defaults to the model path")
    train_data: str = Field(description="training preference data: a JSONL/JSON/Parquet file")
    eval_data: str | None = Field(None, description="held-out preference data file (optional)")
    eval_fraction: float = Field(
        0.0,
        description="when eval_data is not given: fraction of train_data held out for "
        "evaluation (0 = no evaluation)",
    )
    format: Literal["auto", "standard", "conversational", "unpaired"] = Field(
        "auto",
        description="data format: standard {prompt,chosen,rejected} strings, conversational "
        "message lists (chat template), unpaired {prompt,completion,label}; auto detects it",
    )

    # --- objective ---------------------------------------------------------------------------
    loss: str = Field(
        "sigmoid",
        description="objective name from `unialign losses` (a paired, reference-free paired "
        "or unpaired objective)",
    )
    loss_params: dict[str, float | bool | str] = Field(
        default_factory=dict,
        description="keyword hyperparameters of the objective (e.g. {beta: 0.1}); unknown "
        "names are errors",
    )
    beta: float | None = Field(
        None, description="shortcut for loss_params.beta (objectives that have a beta)"
    )

    # --- what to update ------------------------------------------------------------------------
    finetune: Literal["full", "lora"] = Field(
        "full", description="full: update every weight; lora: train a LoRA adapter (peft)"
    )
    lora_r: int = Field(16, description="LoRA rank (finetune: lora only)")
    lora_alpha: float = Field(32.0, description="LoRA scaling alpha (finetune: lora only)")
    lora_dropout: float = Field(0.0, description="LoRA dropout (finetune: lora only)")
    lora_target_modules: list[str] = Field(
        default_factory=list,
        description="module names to adapt; empty = every linear layer except the LM head "
        "(finetune: lora only)",
    )
    merge_lora_on_save: bool = Field(
        True,
        description="also write the adapter merged into the base weights to output_dir/model "
        "(finetune: lora only; the adapter is always written to output_dir/adapter)",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass to save memory"
    )

    # --- optimization --------------------------------------------------------------------------
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="adamw: torch AdamW; sgd: plain SGD without momentum (an update linear in "
        "the gradient, as the invariance tests use)",
    )
    lr: float = Field(1e-6, description="peak learning rate")
    weight_decay: float = Field(
        0.0, description="weight decay: decoupled for adamw, an L2 term in the gradient for sgd"
    )
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="learning-rate schedule after warm-up (decays to 0 at the end)"
    )
    warmup_steps: int = Field(0, description="linear warm-up steps from 0 to lr")
    batch_size: int = Field(8, description="preference examples per micro-step per process")
    grad_accum: int = Field(
        1,
        description="micro-steps accumulated per optimizer step (exact: per-example losses are "
        "summed and divided by the examples in the whole step)",
    )
    max_steps: int | None = Field(None, description="optimizer steps; when set, epochs is ignored")
    epochs: float | None = Field(
        None, description="passes over train_data when max_steps is not set (default 1)"
    )
    max_grad_norm: float | None = Field(
        1.0, description="clip the global gradient norm to this (null or 0 = no clipping)"
    )
    seed: int = Field(0, description="seed of the data order, initialization and dropout")

    # --- sequences and compute -------------------------------------------------------------------
    max_length: int = Field(1024, description="maximum tokens of prompt + completion")
    max_prompt_length: int | None = Field(
        None, description="maximum prompt tokens (left-truncated); default: no separate limit"
    )
    max_tokens_per_row: int | None = Field(
        None,
        description="packing budget: tokens per packed row (>= max_length); default 4 × max_length",
    )
    chunk_size: int = Field(
        1024, description="tokens per LM-head chunk when computing log-probs (memory bound)"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="weights and compute dtype; auto = bf16 on CUDA, fp32 on CPU"
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flex_attention"] = Field(
        "auto",
        description="attention kernel; auto = flex_attention on CUDA (document-masked packing), "
        "sdpa on CPU",
    )
    precompute_ref: bool = Field(
        True,
        description="compute reference log-probs once before training and cache them (no "
        "reference model in memory while training); false = a reference forward per step",
    )
    ref_cache_dir: str | None = Field(
        None, description="reference log-prob cache directory; default output_dir/ref_cache"
    )

    # --- outputs ---------------------------------------------------------------------------------
    output_dir: str = Field("runs/lm", description="run directory (metrics, checkpoints, model)")
    save_every: int = Field(
        0, description="checkpoint every N steps (0 = only on interruption and at the end)"
    )
    keep_checkpoints: int = Field(1, description="how many recent checkpoints to keep")
    eval_every: int = Field(0, description="evaluate every N steps (0 = only at the end)")
    log_every: int = Field(1, description="write a metrics line every N steps")

    # --- field checks ------------------------------------------------------------------------
    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: str) -> str:
        if not Path(v).expanduser().is_dir() and must_exist_locally(v):
            raise ValueError(f"model directory {v!r} does not exist")
        return v

    @field_validator("train_data", "eval_data")
    @classmethod
    def _data_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"data file {v!r} does not exist")
        return v

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        spec = REGISTRY.get(v)
        if spec is None or spec.kind not in LM_LOSS_KINDS:
            what = "unknown objective" if spec is None else f"objective of kind {spec.kind!r}"
            raise ValueError(f"{what} {v!r}; the LM loop trains with: {', '.join(lm_loss_names())}")
        return v

    @field_validator(
        "lr", "lora_alpha", "batch_size", "grad_accum", "max_length", "chunk_size", "lora_r"
    )
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{info.field_name} must be > 0")
        return v

    @field_validator("weight_decay", "warmup_steps", "save_every", "eval_every", "seed")
    @classmethod
    def _non_negative(cls, v: float, info) -> float:
        if v < 0:
            raise ValueError(f"{info.field_name} must be >= 0")
        return v

    @field_validator("log_every", "keep_checkpoints")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1")
        return v

    # --- cross-field checks ------------------------------------------------------------------
    @model_validator(mode="after")
    def _cross_field(self) -> LMTrainConfig:
        spec = REGISTRY[self.loss]
        check_lora_fields(self)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("lora_dropout must lie in [0, 1)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must lie in [0, 1)")
        if self.eval_data is not None and self.eval_fraction > 0:
            raise ValueError("eval_fraction: give either eval_data or eval_fraction, not both")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError("epochs must be > 0")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ValueError("max_prompt_length must lie in (0, max_length)")
        if self.max_tokens_per_row is not None and self.max_tokens_per_row < self.max_length:
            raise ValueError(
                f"max_tokens_per_row ({self.max_tokens_per_row}) must be >= max_length "
                f"({self.max_length}) so that every sequence fits in a row"
            )
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError("max_grad_norm must be >= 0 (0 or null disables clipping)")
        unpaired = spec.kind == "unpaired"
        if unpaired and self.format not in ("auto", "unpaired"):
            raise ValueError(f"format: objective {self.loss!r} needs unpaired data")
        if not unpaired and self.format == "unpaired":
            raise ValueError(f"format: objective {self.loss!r} needs paired data")
        _check_loss_params(spec, self.resolved_loss_params())
        return self

    # --- derived values (computed in one place) -----------------------------------------------
    def resolved_loss_params(self) -> dict[str, Any]:
        """The objective's keyword arguments: registry defaults < loss_params < beta."""
        spec = REGISTRY[self.loss]
        unknown = sorted(set(self.loss_params) - set(spec.hparams))
        if unknown:
            valid = ", ".join(spec.hparams) or "(none)"
            raise ValueError(
                f"loss_params: {', '.join(unknown)} not a hyperparameter of {self.loss!r}; "
                f"valid: {valid}"
            )
        params: dict[str, Any] = {**spec.hparams, **self.loss_params}
        if self.beta is not None:
            if "beta" not in spec.hparams:
                raise ValueError(f"beta: objective {self.loss!r} has no beta")
            if "beta" in self.loss_params and self.loss_params["beta"] != self.beta:
                raise ValueError("beta: differs from loss_params.beta; give one of them")
            params["beta"] = self.beta
        return params

    @property
    def loss_spec(self) -> LossSpec:
        return REGISTRY[self.loss]

    @property
    def is_unpaired(self) -> bool:
        return self.loss_spec.kind == "unpaired"

    @property
    def needs_reference(self) -> bool:
        return self.loss_spec.kind != "paired_ref_free"

    @property
    def row_budget(self) -> int:
        return self.max_tokens_per_row or 4 * self.max_length

    @property
    def ref_cache_path(self) -> Path:
        return Path(self.ref_cache_dir or Path(self.output_dir) / "ref_cache")

    def torch_dtype(self, cuda: bool) -> torch.dtype:
        if self.precision == "auto":
            return torch.bfloat16 if cuda else torch.float32
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def attention(self, cuda: bool) -> str:
        if self.attn_implementation == "auto":
            return "flex_attention" if cuda else "sdpa"
        return self.attn_implementation


def _check_loss_params(spec: LossSpec, params: dict[str, Any]) -> None:
    """Type-check against the defaults, then let the objective validate the values itself
    on a dummy two-example batch (its own range checks raise ``ValueError`` naming them)."""
    for key, value in params.items():
        default = spec.hparams.get(key)
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, str) != isinstance(value, str)
        ):
            raise ValueError(
                f"loss_params.{key} must be of type {type(default).__name__}, got {value!r}"
            )
    z = torch.zeros(2, dtype=torch.float64)
    tokens = torch.full((2,), 3.0, dtype=torch.float64)
    if spec.kind == "unpaired":
        batch: Any = UnpairedLogps(z - 1, z - 1, torch.tensor([True, False]), z - 1, z - 1, tokens)
    else:
        ref = None if spec.kind == "paired_ref_free" else z - 1
        batch = PairedLogps(z - 1, z - 2, ref, ref, tokens, tokens)
    try:
        spec.fn(batch, **params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"loss_params: {e}") from None
