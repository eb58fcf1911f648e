"""The configuration of ``unialign train lm-online``: the online preference loop for causal LMs.

One flat, typed model; each field's description is also its ``--flag`` help. Validation runs
before any model loads: paths, the method name against :data:`~unialign.lm.online_methods.METHODS`,
the objective and its hyperparameters (names and values, by calling the objective once on a
dummy batch), and the cross-field rules; every error names the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unialign.config import changed_fields
from unialign.feedback.judges import parse_judge_config
from unialign.lm.config import check_lora_fields, must_exist_locally
from unialign.lm.online_methods import METHODS, OnlineMethod, dummy_batch
from unialign.lm.online_rewards import SCORE_KINDS
from unialign.lm.refit_reward import RefitRewardConfig
from unialign.losses import REGISTRY, LossSpec

__all__ = ["LMOnlineConfig", "online_method_names", "ONLINE_DPO_KINDS"]

#: Objective kinds online DPO can train with.
ONLINE_DPO_KINDS = ("paired", "paired_ref_free")

#: Judges of the task suite (``task`` must be set).
TASK_JUDGES = ("task:preference", "task:gold")

#: The policy-gradient methods and the fields only PPO takes.
_ROLLOUT_METHODS = ("reinforce", "rloo", "grpo", "ppo")
_PPO_FIELDS = ("gamma", "lam", "value_coef", "value_clip", "value_lr", "whiten_advantages")


def online_method_names() -> list[str]:
    """The ``method`` values of the online loop."""
    return sorted(METHODS)


class LMOnlineConfig(BaseModel):
    """Online preference training of a causal LM (``unialign train lm-online``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # --- policy ------------------------------------------------------------------------------
    model: str | None = Field(
        None,
        description="policy model: a local directory loadable with from_pretrained; may be "
        "left out when task is set (the task's pretrained reference is used)",
    )
    tokenizer: str | None = Field(None, description="tokenizer path; defaults to the model path")
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
        True, description="also write the merged weights to output_dir/model (finetune: lora)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass to save memory"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="weights and compute dtype; auto = bf16 on CUDA, fp32 on CPU"
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flex_attention"] = Field(
        "auto",
        description="attention kernel for the update; auto = flex_attention on CUDA, sdpa on "
        "CPU (sampling uses the same model)",
    )

    # --- prompts -------------------------------------------------------------------------------
    prompts: str | None = Field(
        None,
        description='prompt file: JSONL or JSON rows {"prompt": text or message list}; may be '
        "left out when task is set",
    )
    task: Literal["style"] | None = Field(
        None,
        description="hub-free task from unialign.tasks: its pretrained reference (when model is "
        "not set), its train prompts (when prompts is not set), judges task:preference and "
        "task:gold, and its metrics (eval/style/*, eval/exploitability, eval/gold_reward) on "
        "every iteration's samples",
    )
    task_size: Literal["small", "default"] = Field(
        "small", description="the task reference's size: small (seconds to pretrain) or default"
    )
    task_cache_dir: str | None = Field(
        None, description="where the task's pretrained reference is cached (default: "
        "$UNIALIGN_CACHE or ~/.cache/unialign/tasks)",
    )  # fmt: skip
    prompts_per_iteration: int = Field(8, description="P: prompts sampled per iteration")
    max_prompt_length: int | None = Field(
        None, description="keep at most this many prompt tokens (the last ones); default: all"
    )

    # --- sampling ------------------------------------------------------------------------------
    num_samples: int = Field(
        4, description="K: completions sampled per prompt (>= 2; nash_md: >= 1)"
    )
    max_new_tokens: int = Field(64, description="the most tokens per completion (EOS included)")
    temperature: float = Field(
        1.0,
        description="sampling temperature (> 0); the update scores tokens at temperature 1, so "
        "other values make the samples off-policy",
    )
    top_p: float = Field(1.0, description="nucleus sampling (1 disables it; not for nash_md)")
    top_k: int = Field(0, description="keep the k most likely tokens (0 disables; not nash_md)")
    stop: list[str] = Field(
        default_factory=list,
        description="strings that end a completion (not with nash_md, whose mixture sampler "
        "stops at EOS and max_new_tokens only)",
    )
    generation_batch_size: int = Field(
        32, description="sequences per generate call (the sampled tokens depend on it)"
    )

    # --- judge -------------------------------------------------------------------------------
    judge: str | dict[str, Any] | None = Field(
        None,
        description="the judge: task:preference (the task's pairwise judge), task:gold (its "
        "gold reward), a 'file.py:function' reward function, or a judge config mapping with a "
        "kind (docs/judges.md); a judge object passed to train_lm_online() takes precedence",
    )
    score_temperature: float = Field(
        1.0,
        description="τ of the rule that turns a ScoreJudge's scores into preferences: "
        "P(a ≻ b) = sigmoid((r_a − r_b)/τ)",
    )
    judge_batch_size: int | None = Field(
        None,
        description="prompts per judge call (each call's verdicts are stored at once); "
        "default: all prompts of an iteration",
    )
    judges: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="several score judges combined into one reward, instead of judge: each "
        "task:gold, a 'file.py:function' reward function or a reward_function / reward_model "
        "mapping (docs/lm-online.md, Several rewards)",
    )
    refit: RefitRewardConfig | None = Field(
        None,
        description="classic RLHF / A-PARL (task only, instead of judge): the judge is a reward "
        "model refit every iteration on a simulated teacher's labels of the policy's samples "
        "(docs/aparl-lm.md)",
    )
    reward_combination: Literal["weighted", "log_sigmoid"] = Field(
        "weighted",
        description="judges only: weighted = Σ_p w_p r_p; log_sigmoid = Σ_p log σ(r_p − r_ref,p) "
        "with r_ref,p the reward of the reference policy's greedy completion of the prompt "
        "(Wang et al. 2024)",
    )
    reward_weights: list[float] = Field(
        default_factory=list,
        description="judges with weighted: one weight per judge (empty = 1 each)",
    )

    # --- method --------------------------------------------------------------------------------
    method: str = Field(
        "online_dpo",
        description="online_dpo, sppo, inpo, dno, nash_md, or the policy-gradient methods "
        "reinforce, rloo, grpo, ppo (docs/lm-online.md)",
    )
    loss: str = Field(
        "sigmoid",
        description="online_dpo only: any paired objective of `unialign losses` (sigmoid, ipo, "
        "hinge, simpo, ...); grpo: grpo (its default), dr_grpo, dapo, bnpo or gspo",
    )
    loss_params: dict[str, float | bool | str] = Field(
        default_factory=dict,
        description="keyword hyperparameters of the method's objective (online_dpo: the loss's; "
        "sppo: eta; inpo: eta, tau; dno: beta; nash_md: kl_coef; grpo, ppo: epsilon_low, "
        "epsilon_high, kl_coef, kl_estimator, ...; reinforce, rloo: none)",
    )
    beta: float | None = Field(
        None, description="shortcut for loss_params.beta (objectives that have a beta)"
    )
    pairs: Literal["best_worst", "all"] = Field(
        "best_worst",
        description="online_dpo and inpo: train on the best vs the worst of the K samples, or "
        "on every compared pair (ties skipped)",
    )
    margin_threshold: float = Field(
        0.0,
        description="dno only: keep a best-vs-worst pair only when the judge's margin exceeds "
        "this (score gap for a ScoreJudge, P(y_w ≻ y_l) − 1/2 for a PairJudge)",
    )
    mixture_coef: float = Field(
        0.5,
        description="nash_md only: β of the mixture π_θ^(1−β)·π_ref^β the opponent samples "
        "are drawn from (token-wise over logits)",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="grpo only: divide the group-centred rewards by the std of the prompt's "
        "group, of the whole iteration, or not at all (none: Dr. GRPO)",
    )
    kl_penalty: Literal["none", "k1", "k2", "k3"] = Field(
        "none",
        description="reinforce, rloo, grpo, ppo: subtract kl_penalty_coef·Σ_t k_t from the "
        "reward, k_t this per-token estimator of KL(π_old ‖ π_ref); none = no penalty (a KL loss "
        "term is loss_params.kl_coef)",
    )
    kl_penalty_coef: float = Field(0.05, description="β of kl_penalty (when it is not none)")
    gamma: float = Field(1.0, description="ppo only: GAE discount γ over completion tokens")
    lam: float = Field(0.95, description="ppo only: GAE λ")
    value_coef: float = Field(
        0.1, description="ppo only: weight of the clipped value loss in the total loss"
    )
    value_clip: float = Field(
        0.2, description="ppo only: ε_v of the clipped value loss (V stays within ε_v of V_old)"
    )
    value_lr: float | None = Field(
        None, description="ppo only: learning rate of the value head (default: lr)"
    )
    whiten_advantages: bool = Field(
        True, description="ppo only: normalize the GAE advantages over all completion tokens"
    )

    # --- optimization --------------------------------------------------------------------------
    iterations: int = Field(10, description="sample → judge → update iterations")
    lr: float = Field(1e-6, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, description="AdamW decoupled weight decay")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning-rate schedule over all optimizer steps, after warm-up"
    )
    warmup_steps: int = Field(0, description="linear warm-up optimizer steps from 0 to lr")
    micro_batch_size: int = Field(
        8, description="training examples (pairs or samples) per forward/backward"
    )
    update_epochs: int = Field(
        1, description="passes over each iteration's examples (reshuffled every pass)"
    )
    updates_per_epoch: int = Field(
        1,
        description="optimizer steps per pass: the examples are split into this many equal "
        "groups, each one step with exact gradient accumulation over its micro-batches",
    )
    max_grad_norm: float | None = Field(
        1.0, description="clip the global gradient norm to this (null or 0 = no clipping)"
    )
    seed: int = Field(0, description="seed of prompt order, sampling, initialization, dropout")

    # --- compute -------------------------------------------------------------------------------
    max_tokens_per_row: int | None = Field(
        None,
        description="packing budget for log-probs (tokens per row); default: the longest "
        "sequence of the micro-batch with a dense-mask attention kernel (sdpa/eager, the CPU "
        "default), else max(1024, the longest)",
    )
    chunk_size: int = Field(1024, description="tokens per LM-head chunk when computing log-probs")

    # --- outputs -----------------------------------------------------------------------------
    output_dir: str = Field("runs/lm-online", description="run directory")
    save_every: int = Field(
        0, description="checkpoint every N iterations (0 = only on interruption and at the end)"
    )
    keep_checkpoints: int = Field(1, description="how many recent checkpoints to keep")
    log_every: int = Field(1, description="write a metrics line every N iterations")

    # --- field checks --------------------------------------------------------------------------
    @field_validator("model", "tokenizer")
    @classmethod
    def _dir_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_dir() and must_exist_locally(v):
            raise ValueError(f"directory {v!r} does not exist")
        return v

    @field_validator("prompts")
    @classmethod
    def _file_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"prompt file {v!r} does not exist")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; valid: {', '.join(online_method_names())}")
        return v

    @field_validator("loss")
    @classmethod
    def _paired_loss(cls, v: str, info) -> str:
        rollout = getattr(METHODS.get(info.data.get("method", "")), "rollout", None)
        if rollout is not None:  # the field's default means "the method's own objective"
            if v in rollout.losses or v == cls.model_fields["loss"].default:
                return v
            if len(rollout.losses) > 1:
                raise ValueError(f"{info.data['method']} trains with: {', '.join(rollout.losses)}")
            return v  # the cross-field check says that this method takes no loss
        spec = REGISTRY.get(v)
        if spec is None or spec.kind not in ONLINE_DPO_KINDS:
            names = sorted(n for n, s in REGISTRY.items() if s.kind in ONLINE_DPO_KINDS)
            what = "unknown objective" if spec is None else f"objective of kind {spec.kind!r}"
            raise ValueError(f"{what} {v!r}; online_dpo trains with: {', '.join(names)}")
        return v

    @field_validator(
        "lr", "lora_alpha", "lora_r", "prompts_per_iteration", "max_new_tokens", "iterations",
        "micro_batch_size", "update_epochs", "updates_per_epoch", "generation_batch_size",
        "chunk_size", "score_temperature", "temperature", "value_clip",
    )  # fmt: skip
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{info.field_name} must be > 0")
        return v

    @field_validator("weight_decay", "warmup_steps", "save_every", "seed", "margin_threshold",
                     "top_k", "kl_penalty_coef", "value_coef")  # fmt: skip
    @classmethod
    def _non_negative(cls, v: float, info) -> float:
        if not v >= 0:
            raise ValueError(f"{info.field_name} must be >= 0")
        return v

    @field_validator("log_every", "keep_checkpoints")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1")
        return v

    # --- cross-field checks --------------------------------------------------------------------
    @model_validator(mode="after")
    def _cross_field(self) -> LMOnlineConfig:
        # "given" = differs from its default: the config.yaml a run writes lists every field
        set_ = set(changed_fields(self, self.model_fields_set))
        if self.model is None and self.task is None:
            raise ValueError("model: required (or set task to train the task's reference)")
        if self.prompts is None and self.task is None:
            raise ValueError("prompts: required (a prompt file, or set task)")
        if self.task is None and (given := [f for f in ("task_size", "task_cache_dir")
                                            if f in set_]):  # fmt: skip
            raise ValueError(f"{', '.join(given)}: need task")
        check_lora_fields(self)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("lora_dropout must lie in [0, 1)")
        method = self.online_method
        variants = method.rollout.losses if method.rollout is not None else ()
        if "loss" in set_ and self.method != "online_dpo" and len(variants) < 2:
            raise ValueError(f"loss: only online_dpo takes a loss (and grpo one of its variants); "
                             f"{self.method} trains with {method.objective.name}")  # fmt: skip
        if "pairs" in set_ and not method.pair_rule:
            raise ValueError(f"pairs: {self.method} does not build pairs by this rule")
        if "margin_threshold" in set_ and self.method != "dno":
            raise ValueError("margin_threshold: dno only")
        if "mixture_coef" in set_ and self.method != "nash_md":
            raise ValueError("mixture_coef: nash_md only")
        if not 0.0 <= self.mixture_coef <= 1.0:
            raise ValueError("mixture_coef must lie in [0, 1]")
        one = method.mixture or (method.rollout is not None and method.rollout.advantage in
                                 ("mean_baseline", "gae"))  # fmt: skip
        if self.num_samples < (1 if one else 2):
            raise ValueError(f"num_samples must be >= {1 if one else 2} for method {self.method}")
        if method.mixture:
            for name, default in (("stop", []), ("top_p", 1.0), ("top_k", 0)):
                if getattr(self, name) != default:
                    raise ValueError(f"{name}: not supported with nash_md (the mixture sampler "
                                     "uses the temperature only)")  # fmt: skip
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must lie in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop: empty strings are not stop strings")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError("max_prompt_length must be >= 1")
        if self.judge_batch_size is not None and self.judge_batch_size < 1:
            raise ValueError("judge_batch_size must be >= 1")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError("max_grad_norm must be >= 0 (0 or null disables clipping)")
        if self.max_tokens_per_row is not None and self.max_tokens_per_row < 1:
            raise ValueError("max_tokens_per_row must be >= 1")
        self._check_refit()
        self._check_judge()
        self._check_rollout(set_)
        _check_params(self.objective, self.resolved_params(), method)
        return self

    def _check_judge(self) -> None:
        """Task judges need the task; any other spec is validated as a judge config (a judge
        of people must label in a store other than the run's own feedback store, which a
        resume rolls back)."""
        self._check_judges()
        spec = self.judge
        if isinstance(spec, str) and spec.startswith("task:"):
            if self.task is None:
                raise ValueError(f"judge: {spec} needs task")
            if spec not in TASK_JUDGES:
                raise ValueError(f"judge: unknown task judge {spec!r}; valid: "
                                 f"{', '.join(TASK_JUDGES)}")  # fmt: skip
            if self.online_method.rollout is not None and spec != "task:gold":
                raise ValueError(f"judge: method {self.method} needs a ScoreJudge (one reward per "
                                 f"sample); {spec} is a PairJudge")  # fmt: skip
            return
        if spec is None:
            return
        judge_cfg = parse_judge_config(spec, source="judge")  # JudgeConfigError names the field
        if self.online_method.rollout is not None and judge_cfg.kind not in SCORE_KINDS:
            raise ValueError(f"judge: method {self.method} needs a ScoreJudge (one reward per "
                             f"sample); a {judge_cfg.kind} judge compares pairs")  # fmt: skip
        store = getattr(judge_cfg, "store", None)
        run_store = Path(self.output_dir) / "feedback.sqlite"
        if store is not None and Path(store).expanduser().resolve() == run_store.resolve():
            raise ValueError(
                f"judge.store: {store} is the run's own feedback store; people label in "
                "another store file (the run's store is rolled back on resume)"
            )

    def _check_refit(self) -> None:
        """``refit`` needs the task (its gold reward is the teacher's) and replaces the judge;
        A-PARL needs the lower objective's β (``refit.beta`` or a KL penalty)."""
        if self.refit is None:
            return
        if self.task is None:
            raise ValueError("refit: needs task (the teacher labels from the task's gold reward)")
        if self.judge is not None or self.judges:
            raise ValueError("refit: the refit reward model is the judge; leave judge/judges out")
        if self.refit.correction == "aparl" and self.refit_beta is None:
            raise ValueError("refit.beta: correction aparl needs β of the lower objective (set "
                             "refit.beta, or kl_penalty with kl_penalty_coef > 0)")  # fmt: skip

    @property
    def refit_beta(self) -> float | None:
        """β of A-PARL's lower objective: ``refit.beta``, else the policy's KL penalty."""
        if self.refit is not None and self.refit.beta is not None:
            return self.refit.beta
        on = self.kl_penalty != "none" and self.kl_penalty_coef > 0
        return self.kl_penalty_coef if on else None

    def _check_judges(self) -> None:
        """``judges``: score judges only, not with ``judge``; the combination fields need it."""
        if not self.judges:
            for name in ("reward_combination", "reward_weights"):
                if changed_fields(self, [name]):
                    raise ValueError(f"{name}: needs judges (several score judges)")
            return
        if self.judge is not None:
            raise ValueError("judges: give either judge (one) or judges (several), not both")
        for i, spec in enumerate(self.judges):
            where = f"judges[{i}]"
            if isinstance(spec, str) and spec.startswith("task:"):
                if spec != "task:gold":
                    raise ValueError(f"{where}: {spec} is not a score judge (task:gold is)")
                if self.task is None:
                    raise ValueError(f"{where}: {spec} needs task")
                continue
            kind = parse_judge_config(spec, source=where).kind
            if kind not in SCORE_KINDS:
                raise ValueError(f"{where}: a {kind} judge compares pairs; reward combination "
                                 f"needs score judges ({', '.join(SCORE_KINDS)})")  # fmt: skip
        if self.reward_weights:
            if self.reward_combination != "weighted":
                raise ValueError("reward_weights: only with reward_combination: weighted "
                                 f"(not {self.reward_combination})")  # fmt: skip
            if len(self.reward_weights) != len(self.judges):
                raise ValueError(f"reward_weights: {len(self.reward_weights)} weights for "
                                 f"{len(self.judges)} judges")  # fmt: skip

    def _check_rollout(self, given: set[str]) -> None:
        """Policy-gradient fields only with their methods, and in range."""
        rollout = self.online_method.rollout
        only = {"scale_rewards": ("grpo",), "kl_penalty": _ROLLOUT_METHODS,
                "kl_penalty_coef": _ROLLOUT_METHODS}  # fmt: skip
        only.update({f: ("ppo",) for f in _PPO_FIELDS})
        for name, methods in only.items():
            if name in given and self.method not in methods:
                which = methods[0] if len(methods) == 1 else (
                    f"the policy-gradient methods ({', '.join(methods)})")  # fmt: skip
                raise ValueError(f"{name}: {which} only")
        if rollout is None:
            return
        if "kl_penalty_coef" in given and self.kl_penalty == "none":
            raise ValueError("kl_penalty_coef: needs kl_penalty (k1, k2 or k3)")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.value_lr is not None and not self.value_lr > 0:
            raise ValueError("value_lr must be > 0")
        longest = self.resolved_params().get("max_completion_length")
        if (
            self.objective.name == "dr_grpo"
            and "max_completion_length" in self.loss_params
            and (isinstance(longest, int) and longest < self.max_new_tokens)
        ):
            raise ValueError(f"loss_params.max_completion_length ({longest}) must be >= "
                             f"max_new_tokens ({self.max_new_tokens})")  # fmt: skip

    # --- derived values (computed in one place) -------------------------------------------------
    @property
    def online_method(self) -> OnlineMethod:
        return METHODS[self.method]

    @property
    def objective(self) -> LossSpec:
        """The objective the update calls: the method's, or ``loss`` for online DPO (and for
        grpo, one of its variants)."""
        rollout = self.online_method.rollout
        if rollout is not None:
            return REGISTRY[self.loss if self.loss in rollout.losses else rollout.losses[0]]
        return self.online_method.objective or REGISTRY[self.loss]

    def resolved_params(self) -> dict[str, Any]:
        """The objective's keyword arguments: defaults < loss_params < beta."""
        spec = self.objective
        unknown = sorted(set(self.loss_params) - set(spec.hparams))
        if unknown:
            raise ValueError(
                f"loss_params: {', '.join(unknown)} not a hyperparameter of {spec.name!r}; "
                f"valid: {', '.join(spec.hparams) or '(none)'}"
            )
        params: dict[str, Any] = {**spec.hparams, **self.loss_params}
        for key, value in self.loss_params.items():  # YAML numbers arrive as floats here
            default = spec.hparams.get(key)
            if type(default) is int and isinstance(value, float) and value.is_integer():
                params[key] = int(value)
        if self.beta is not None:
            if "beta" not in spec.hparams:
                raise ValueError(f"beta: objective {spec.name!r} has no beta")
            if "beta" in self.loss_params and self.loss_params["beta"] != self.beta:
                raise ValueError("beta: differs from loss_params.beta; give one of them")
            params["beta"] = self.beta
        return params

    @property
    def needs_reference(self) -> bool:
        """ℓ_ref is needed (the objective's reference term, or Nash-MD's mixture)."""
        m = self.online_method
        penalty = m.rollout is not None and self.kl_penalty != "none" and self.kl_penalty_coef > 0
        return (
            m.uses_reference(self.objective, self.resolved_params())
            or penalty
            or (m.mixture and self.mixture_coef > 0)
        )

    @property
    def build_options(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "margin_threshold": self.margin_threshold}

    def torch_dtype(self, cuda: bool) -> torch.dtype:
        if self.precision == "auto":
            return torch.bfloat16 if cuda else torch.float32
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def attention(self, cuda: bool) -> str:
        if self.attn_implementation == "auto":
            return "flex_attention" if cuda else "sdpa"
        return self.attn_implementation


def _check_params(spec: LossSpec, params: dict[str, Any], method: OnlineMethod) -> None:
    """Types against the defaults, then values: the objective checks its own on a dummy batch."""
    for key, value in params.items():
        default = spec.hparams.get(key)
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, str) != isinstance(value, str)
        ):
            raise ValueError(
                f"loss_params.{key} must be of type {type(default).__name__}, got {value!r}"
            )
    try:
        spec.fn(dummy_batch(method), **params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"loss_params: {e}") from None
