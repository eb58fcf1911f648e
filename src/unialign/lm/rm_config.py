"""Configuration of reward-model training (``unialign train rm``).

One flat, typed model, documented per field (the descriptions are also the ``--flag`` help).
Validation runs before anything heavy is loaded: paths, value ranges and the cross-field rules
(LoRA fields only with ``finetune: lora``, GPM fields only with ``head: gpm``, ensemble fields
only with ``ensemble_size > 1``, ...). Every error names the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unialign.config import changed_fields
from unialign.lm.config import check_lora_fields, must_exist_locally

__all__ = ["RMTrainConfig"]

_GPM_FIELDS = ("gpm_dim", "gpm_tau", "gpm_normalize")
_ENSEMBLE_FIELDS = ("ensemble_kind", "bootstrap")


class RMTrainConfig(BaseModel):
    """Reward-model training on preference pairs (``unialign train rm``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # --- what to train, on what ------------------------------------------------------------
    model: str = Field(
        description="base causal LM: a local directory loadable with from_pretrained; it gets "
        "a sequence-classification head (AutoModelForSequenceClassification)"
    )
    tokenizer: str | None = Field(None, description="tokenizer path; defaults to the model path")
    train_data: str = Field(description="training preference pairs: a JSONL/JSON/Parquet file")
    eval_data: str | None = Field(None, description="held-out preference pairs (optional)")
    eval_fraction: float = Field(
        0.0,
        description="when eval_data is not given: fraction of train_data held out (grouped by "
        "prompt) for the held-out accuracy (0 = no evaluation)",
    )
    format: Literal["auto", "standard", "conversational"] = Field(
        "auto",
        description="paired data format: standard {prompt,chosen,rejected} strings or "
        "conversational message lists (chat template); auto detects it",
    )
    margin_field: str | None = Field(
        "margin",
        description="row field holding a per-pair margin m >= 0 of the Bradley-Terry loss "
        "(rows without it: m = 0); null ignores the field",
    )

    # --- head and objective ------------------------------------------------------------------
    head: Literal["scalar", "gpm"] = Field(
        "scalar",
        description="scalar: one reward per sequence, Bradley-Terry loss; gpm: a gpm_dim "
        "preference embedding scored with the skew-symmetric operator (general preference model)",
    )
    centering: float = Field(
        0.0, description="coefficient c of the centering term c*(R_w + R_l)^2 (head: scalar)"
    )
    gpm_dim: int = Field(8, description="embedding width 2k, even (head: gpm only)")
    gpm_tau: float = Field(0.1, description="temperature tau of P = sigmoid(s/tau) (head: gpm)")
    gpm_normalize: bool = Field(
        True, description="scale each embedding to unit L2 norm, as the GPM paper (head: gpm)"
    )

    # --- ensembles ------------------------------------------------------------------------------
    ensemble_size: int = Field(
        1, description="K reward models trained together (head: scalar); 1 = a single model"
    )
    ensemble_kind: Literal["shared_trunk", "lora_adapters"] = Field(
        "shared_trunk",
        description="shared_trunk: K scalar heads on one trunk (one forward per batch); "
        "lora_adapters: K LoRA adapters and heads over one frozen base (K forwards; needs "
        "finetune: lora)",
    )
    bootstrap: bool = Field(
        True,
        description="each member fits its own bootstrap resample of train_data (pair counts "
        "~ Multinomial(N, 1/N), seeded); false: the same data, members differ by their init",
    )

    # --- what to update ------------------------------------------------------------------------
    finetune: Literal["full", "lora"] = Field(
        "full",
        description="full: update every weight; lora: LoRA adapter(s) (peft, task SEQ_CLS) "
        "with the head trained in full",
    )
    lora_r: int = Field(16, description="LoRA rank (finetune: lora only)")
    lora_alpha: float = Field(32.0, description="LoRA scaling alpha (finetune: lora only)")
    lora_dropout: float = Field(0.0, description="LoRA dropout (finetune: lora only)")
    lora_target_modules: list[str] = Field(
        default_factory=list,
        description="module names to adapt; empty = every linear layer except the head "
        "(finetune: lora only)",
    )
    merge_lora_on_save: bool = Field(
        True,
        description="single model: also write the adapter merged into the base to "
        "output_dir/model (finetune: lora only; ensembles always write merged members)",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass to save memory"
    )

    # --- optimization --------------------------------------------------------------------------
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw: torch AdamW; sgd: plain SGD without momentum"
    )
    lr: float = Field(1e-5, description="peak learning rate")
    weight_decay: float = Field(
        0.0, description="weight decay: decoupled for adamw, an L2 term in the gradient for sgd"
    )
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="learning-rate schedule after warm-up (decays to 0 at the end)"
    )
    warmup_steps: int = Field(0, description="linear warm-up steps from 0 to lr")
    batch_size: int = Field(8, description="preference pairs per micro-step per process")
    grad_accum: int = Field(
        1,
        description="micro-steps accumulated per optimizer step (exact: per-pair losses are "
        "summed and divided by the pairs in the whole step)",
    )
    max_steps: int | None = Field(None, description="optimizer steps; when set, epochs is ignored")
    epochs: float | None = Field(
        None, description="passes over train_data when max_steps is not set (default 1)"
    )
    max_grad_norm: float | None = Field(
        1.0,
        description="clip the gradient norm to this (null or 0 = no clipping); per member for "
        "lora_adapters ensembles, which share no trainable weight",
    )
    seed: int = Field(0, description="seed of the data order, head init, bootstrap and dropout")

    # --- sequences and compute -----------------------------------------------------------------
    max_length: int = Field(
        1024,
        description="tokens per scored sequence; longer ones lose their start (left "
        "truncation, as RewardModelJudge: give the judge the same max_length)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="weights and compute dtype; auto = bf16 on CUDA, fp32 on CPU"
    )
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="attention kernel")

    # --- outputs ---------------------------------------------------------------------------------
    output_dir: str = Field("runs/rm", description="run directory (metrics, checkpoints, model)")
    save_every: int = Field(
        0, description="checkpoint every N steps (0 = only on interruption and at the end)"
    )
    keep_checkpoints: int = Field(1, description="how many recent checkpoints to keep")
    eval_every: int = Field(0, description="evaluate every N steps (0 = only at the end)")
    log_every: int = Field(1, description="write a metrics line every N steps")

    # --- field checks --------------------------------------------------------------------------
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

    @field_validator(
        "lr", "lora_alpha", "batch_size", "grad_accum", "max_length", "lora_r", "gpm_tau",
        "ensemble_size", "gpm_dim",
    )  # fmt: skip
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{info.field_name} must be > 0")
        return v

    @field_validator(
        "weight_decay", "warmup_steps", "save_every", "eval_every", "seed", "centering"
    )
    @classmethod
    def _non_negative(cls, v: float, info) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{info.field_name} must be a finite number >= 0")
        return v

    @field_validator("log_every", "keep_checkpoints")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1")
        return v

    @field_validator("gpm_dim")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"gpm_dim must be even (2k: k two-dimensional blocks), got {v}")
        return v

    @field_validator("max_length")
    @classmethod
    def _room(cls, v: int) -> int:
        if v < 2:
            raise ValueError("max_length must be >= 2")
        return v

    # --- cross-field checks --------------------------------------------------------------------
    @model_validator(mode="after")
    def _cross_field(self) -> RMTrainConfig:
        # changed from the default, not "given": the config.yaml a run writes lists every field
        given = set(changed_fields(self, type(self).model_fields))
        check_lora_fields(self)
        if self.head != "gpm" and (bad := [f for f in _GPM_FIELDS if f in given]):
            raise ValueError(f"{', '.join(bad)}: GPM fields need head: gpm")
        if self.head == "gpm" and "centering" in given:
            raise ValueError("centering: applies to head: scalar (the GPM score has no offset)")
        if self.ensemble_size == 1 and (bad := [f for f in _ENSEMBLE_FIELDS if f in given]):
            raise ValueError(f"{', '.join(bad)}: ensemble fields need ensemble_size > 1")
        if self.ensemble_size > 1:
            if self.head != "scalar":
                raise ValueError("ensemble_size: ensembles are of scalar heads (head: scalar)")
            if self.ensemble_kind == "lora_adapters" and self.finetune != "lora":
                raise ValueError("ensemble_kind: lora_adapters needs finetune: lora")
            if "merge_lora_on_save" in given and not self.merge_lora_on_save:
                raise ValueError(
                    "merge_lora_on_save: ensembles are always written as merged members (what "
                    "RewardModelJudge loads); the adapters are written too"
                )
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
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError("max_grad_norm must be >= 0 (0 or null disables clipping)")
        if self.margin_field is not None and not self.margin_field.strip():
            raise ValueError("margin_field must be a column name or null")
        return self

    # --- derived values (computed in one place) -----------------------------------------------
    @property
    def num_outputs(self) -> int:
        """Width of the classification head: 1, K (shared trunk) or gpm_dim."""
        if self.head == "gpm":
            return self.gpm_dim
        return self.ensemble_size if self.ensemble_kind == "shared_trunk" else 1

    @property
    def adapters(self) -> int:
        """LoRA adapters to train: K for lora_adapters ensembles, else 1 (0 without LoRA)."""
        if self.finetune != "lora":
            return 0
        return self.ensemble_size if self.ensemble_kind == "lora_adapters" else 1

    def lora_settings(self) -> dict | None:
        """``{r, alpha, dropout, target_modules}`` for LoRA, else None."""
        if self.finetune != "lora":
            return None
        return dict(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                    target_modules=self.lora_target_modules)  # fmt: skip

    def torch_dtype(self, cuda: bool) -> torch.dtype:
        if self.precision == "auto":
            return torch.bfloat16 if cuda else torch.float32
        return torch.bfloat16 if self.precision == "bf16" else torch.float32
