"""A reward model refit every iteration on a teacher's labels of the policy's own samples.

Classic RLHF as a component of the online loop (``refit:`` in ``train lm-online``): the loop's
judge is this reward model, and before the judge phase of iteration t the loop calls
:meth:`RewardRefit.round`, which

1. **features** — runs the frozen trunk (the initial policy's weights) on the N samples;
   φ(x, y) = [mean of the last hidden states over the completion tokens, the last one];
2. **labels** — draws up to ``labels_per_iteration`` pairs of samples of one prompt (seeded by
   (seed, t)), labels them with a simulated B-Pref teacher of the task's hidden gold reward
   (:class:`unialign.feedback.teachers.Teacher`) until ``label_budget`` is spent, and stores
   queries and labels in the run's feedback store (labeller ``teacher:<kind>``);
3. **refit** — ``epochs`` full-batch AdamW steps of the head r_ν(x, y) = MLP(φ) on the
   Bradley–Terry loss over every label so far; with ``correction: aparl`` each step adds A-PARL's
   implicit term (:func:`unialign.lm.refit_aparl.aparl_implicit_term`) computed on this
   iteration's samples: per-sequence score vectors s_n = ∇_θ log π_θ(y_n|x_n) of the current
   policy (one forward and backward pass per sample), the Fisher solve by conjugate gradient,
   β the lower objective's KL coefficient.

The judge phase then scores the samples with the refit head (:meth:`RewardRefit.score`).
State (head weights, optimizer, label buffer, counters) is saved next to each checkpoint as
``checkpoints/refit-<step>.pt`` and restored on resume; the pairs and labels of an iteration
are functions of (seed, t), so a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from unialign.feedback.store import FeedbackStore
from unialign.feedback.teachers import Teacher, TeacherConfig
from unialign.lm.generation import Generations, completion_logps, encode_prompts
from unialign.lm.refit_aparl import aparl_implicit_term, pair_log_likelihood

__all__ = ["RefitRewardConfig", "RewardRefit"]


class RefitRewardConfig(BaseModel):
    """``refit:`` of ``train lm-online``: the refit reward model and its teacher."""

    model_config = ConfigDict(extra="forbid")

    labels_per_iteration: int = Field(16, description="teacher labels asked per iteration")
    label_budget: int | None = Field(
        None, description="teacher labels in all; null = iterations × labels_per_iteration"
    )
    teacher: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "oracle"},
        description="B-Pref teacher over the task's gold reward: TeacherConfig fields (kind: "
        "oracle | stochastic | mistake | ..., beta, eps_mistake, ...)",
    )
    head_hidden: int = Field(64, description="hidden width of the reward head (0 = linear)")
    epochs: int = Field(50, description="full-batch AdamW steps of the head per iteration")
    lr: float = Field(1e-2, description="AdamW learning rate of the head")
    weight_decay: float = Field(1e-4, description="AdamW weight decay of the head")
    correction: Literal["none", "aparl"] = Field(
        "none", description="none: classic RLHF; aparl: add the hypergradient's implicit term"
    )
    beta: float | None = Field(
        None, description="aparl: β of the lower objective E[r] − β KL; default kl_penalty_coef"
    )
    cg_iters: int = Field(10, description="aparl: conjugate-gradient iterations")
    damping: float = Field(
        0.1, description="aparl: λ relative to the mean nonzero Fisher eigenvalue tr(F̂)/N"
    )

    @field_validator("labels_per_iteration", "epochs", "lr", "cg_iters")
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not v > 0:
            raise ValueError(f"refit.{info.field_name} must be > 0")
        return v

    @field_validator("label_budget", "beta")
    @classmethod
    def _positive_or_none(cls, v: float | None, info) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"refit.{info.field_name} must be > 0 (or null)")
        return v

    @field_validator("head_hidden", "weight_decay", "damping")
    @classmethod
    def _non_negative(cls, v: float, info) -> float:
        if not v >= 0:
            raise ValueError(f"refit.{info.field_name} must be >= 0")
        return v

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            TeacherConfig(**v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"refit.teacher: {e}") from None
        return v


def _seed(seed: int, iteration: int) -> int:
    return (seed * 1_000_003 + iteration) * 64 + 40


class RewardRefit:
    """The refit reward model: a ScoreJudge named ``refit-rm`` plus its per-iteration refit.

    Args:
        cfg: the ``refit`` settings.
        trunk: the frozen causal LM whose last hidden states are the features.
        tokenizer: its tokenizer (for :meth:`score` on texts the round has not seen).
        gold: ``(prompts, completions) -> list[float]``, the teacher's hidden reward.
        budget: the total label budget.
        beta: β of the lower objective (``correction: aparl``).
        seed: the run's seed (head init, pair choice, teacher draws).
    """

    name = "refit-rm"

    def __init__(self, cfg: RefitRewardConfig, trunk, tokenizer, gold, *, budget: int,
                 beta: float | None, seed: int) -> None:  # fmt: skip
        self.cfg, self.trunk, self.tokenizer, self.gold = cfg, trunk.eval(), tokenizer, gold
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.budget, self.beta, self.seed = budget, beta, seed
        self.device = next(trunk.parameters()).device
        width = 2 * trunk.config.hidden_size
        gen = torch.Generator().manual_seed(seed)
        if cfg.head_hidden:
            layers = [torch.nn.Linear(width, cfg.head_hidden), torch.nn.Tanh(),
                      torch.nn.Linear(cfg.head_hidden, 1)]  # fmt: skip
        else:
            layers = [torch.nn.Linear(width, 1)]
        self.head = torch.nn.Sequential(*layers)
        with torch.no_grad():
            for p in self.head.parameters():  # seeded init, independent of the global RNG
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(p.shape[-1])))
        self.head.to(self.device)
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)  # fmt: skip
        self.teacher = Teacher(TeacherConfig(**cfg.teacher))
        self.f1 = torch.zeros(0, width)  # the label buffer: features of both sides, labels
        self.f2 = torch.zeros(0, width)
        self.labels = torch.zeros(0)
        self.labels_used = 0  # asked, skips included: what the budget counts
        self._cache: dict[tuple[str, str], Tensor] = {}

    # --- the judge ----------------------------------------------------------------------------
    def reward(self, feats: Tensor) -> Tensor:
        """r_ν of ``[B, 2h]`` features, ``[B]``, differentiable in the head."""
        return self.head(feats.to(self.device)).squeeze(-1)

    def score(self, prompts, completions) -> list[float]:
        """The refit reward of each completion (features cached by the round, else computed)."""
        keys = [(_key(p), _key(c)) for p, c in zip(prompts, completions, strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            pids = encode_prompts(self.tokenizer, [prompts[i] for i in missing])
            cids = [self.tokenizer(_text(completions[i]), add_special_tokens=False)["input_ids"]
                    for i in missing]  # fmt: skip
            for i, f in zip(missing, self.features(pids, cids)):
                self._cache[keys[i]] = f
        with torch.no_grad():
            return self.reward(torch.stack([self._cache[k] for k in keys])).tolist()

    @torch.no_grad()
    def features(self, prompt_ids, completion_ids, batch: int = 32) -> Tensor:
        """φ = [mean of the trunk's last hidden states over completion tokens, the last one]."""
        out = []
        pad = self.tokenizer.pad_token_id
        for b0 in range(0, len(prompt_ids), batch):
            rows = [list(p) + list(c) for p, c in zip(prompt_ids[b0 : b0 + batch],
                                                      completion_ids[b0 : b0 + batch])]  # fmt: skip
            n = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows],
                                device=self.device)  # fmt: skip
            h = self.trunk(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            h = h.hidden_states[-1].float()
            for i, (p, r) in enumerate(zip(prompt_ids[b0 : b0 + batch], rows)):
                lo, hi = min(len(p), len(r) - 1), len(r)  # an empty completion: the last token
                out.append(torch.cat([h[i, lo:hi].mean(0), h[i, hi - 1]]).cpu())
        return torch.stack(out)

    # --- one round ----------------------------------------------------------------------------
    def round(
        self,
        iteration: int,
        prompts: list,
        gens: Generations,
        completions: list,
        *,
        policy: torch.nn.Module,
        store: FeedbackStore | None,
        temperature: float = 1.0,
        **logps_kw: Any,
    ) -> dict[str, float]:
        """Features, labels, refit (module docstring); returns the ``refit/*`` metrics."""
        owner = [prompts[i] for i in gens.prompt_index]
        feats = self.features(gens.prompt_ids, gens.completion_ids)
        self._cache = {(_key(p), _key(c)): f for p, c, f in zip(owner, completions, feats)}
        gold = torch.tensor(self.gold(owner, completions), dtype=torch.float64)
        m: dict[str, float] = {}
        with torch.no_grad():
            m["refit/gold_corr"] = _corr(self.reward(feats).double().cpu(), gold)
        n_new = min(self.cfg.labels_per_iteration, self.budget - self.labels_used)
        if n_new <= 0:
            m["refit/labels_used"] = float(self.labels_used)
            return m
        rng = np.random.default_rng(_seed(self.seed, iteration))
        K = gens.num_samples
        cands = [(p * K + i, p * K + j) for p in range(gens.num_prompts) for i in range(K)
                 for j in range(i + 1, K)]  # fmt: skip
        pick = torch.tensor([cands[k] for k in rng.permutation(len(cands))[:n_new]]).view(-1, 2)
        self.teacher.update_mean_return(float(gold.mean()))  # R̄ of the skip/equal rules
        out = self.teacher.label_returns(gold[pick[:, 0]], gold[pick[:, 1]], rng)
        self.labels_used += len(pick)
        if store is not None:
            qids = store.add_completion_queries(
                [owner[i] for i in pick[:, 0]], [completions[i] for i in pick[:, 0]],
                [completions[j] for j in pick[:, 1]], step=iteration,
                policy_version=iteration - 1,
                token_ids_1=[list(gens.completion_ids[i]) for i in pick[:, 0]],
                token_ids_2=[list(gens.completion_ids[j]) for j in pick[:, 1]],
                rewards_1=gold[pick[:, 0]], rewards_2=gold[pick[:, 1]], selection="refit",
                source={"refit": self.cfg.correction},
            )  # fmt: skip
            store.add_labels(qids, torch.nan_to_num(out.labels), labeler=self.teacher.name,
                             keep_mask=out.keep, reason="teacher skipped")  # fmt: skip
        keep = out.keep
        pick, lab = pick[keep], out.labels[keep].float()
        with torch.no_grad():  # accuracy on the new on-policy labels before they are fitted
            d = self.reward(feats[pick[:, 0]]) - self.reward(feats[pick[:, 1]])
            decided = lab != 0.5
            if decided.any():
                right = (d.cpu() > 0).float() == lab
                m["refit/new_label_accuracy"] = float(right[decided].float().mean())
        self.f1 = torch.cat([self.f1, feats[pick[:, 0]]])
        self.f2 = torch.cat([self.f2, feats[pick[:, 1]]])
        self.labels = torch.cat([self.labels, lab])
        m["refit/labels_used"] = float(self.labels_used)
        if not len(self.labels):  # every label so far skipped by the teacher: nothing to fit
            return m
        scores = None
        if self.cfg.correction == "aparl" and len(pick):
            scores = _score_vectors(policy, gens, temperature=temperature, **logps_kw)
        m.update(self._fit(feats, pick, lab, scores, torch.tensor(gens.prompt_index)))
        with torch.no_grad():
            m["refit/gold_corr_after"] = _corr(self.reward(feats).double().cpu(), gold)
        return m

    def _fit(self, feats, pick, lab, scores, groups) -> dict[str, float]:
        """``epochs`` AdamW steps on −(1/M) Σ U over the buffer, minus the implicit term."""
        self.head.train()
        f1, f2, y = self.f1.to(self.device), self.f2.to(self.device), self.labels.to(self.device)
        nu = list(self.head.parameters())
        n, implicit_norm, residual = len(feats), 0.0, 0.0
        if scores is not None:
            s = scores.to(self.device)
            lam = self.cfg.damping * float((s * s).sum()) / (n * n)  # λ · tr(F̂)/N, F̂ = SᵀS/N
        for _ in range(self.cfg.epochs):
            self.opt.zero_grad(set_to_none=True)
            loss = -pair_log_likelihood(self.reward(f1), self.reward(f2), y).mean()
            loss.backward()
            if scores is not None:
                r = self.reward(feats)
                u = pair_log_likelihood(r[pick[:, 0]], r[pick[:, 1]], lab.to(self.device))
                term = aparl_implicit_term(
                    s, torch.full((n,), 1.0 / n, device=self.device), r, nu, pick.to(self.device),
                    torch.full((len(pick),), 1.0 / len(pick), device=self.device), u,
                    beta=self.beta, iters=self.cfg.cg_iters, damping=lam,
                    groups=groups.to(self.device),
                )  # fmt: skip
                for p, t in zip(nu, term.grads):  # ascent on G: descent on −G
                    p.grad -= t.to(p.grad.dtype)
                implicit_norm = math.sqrt(sum(float((t * t).sum()) for t in term.grads))
                residual = term.residual
            self.opt.step()
        self.head.eval()
        with torch.no_grad():
            d = self.reward(f1) - self.reward(f2)
            decided = y != 0.5
            acc = (
                ((d > 0).float() == y)[decided].float().mean() if decided.any() else d.new_zeros(())
            )
        m = {"refit/loss": float(loss.detach()), "refit/train_accuracy": float(acc),
             "refit/buffer": float(len(y))}  # fmt: skip
        if scores is not None:
            m.update({"refit/implicit_norm": implicit_norm, "refit/cg_residual": residual})
        return m

    # --- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "opt": self.opt.state_dict(), "f1": self.f1,
                "f2": self.f2, "labels": self.labels, "labels_used": self.labels_used,
                "teacher": self.teacher.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])
        self.f1, self.f2, self.labels = state["f1"], state["f2"], state["labels"]
        self.labels_used = int(state["labels_used"])
        self.teacher.load_state_dict(state["teacher"])

    def save(self, out: str | Path, step: int) -> None:
        """``checkpoints/refit-<step>.pt`` (atomic); older ones without a checkpoint go."""
        root = Path(out) / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".refit-{step:06d}.pt.tmp"
        torch.save(self.state_dict(), tmp)
        tmp.replace(root / f"refit-{step:06d}.pt")
        for p in root.glob("refit-*.pt"):
            k = int(re.fullmatch(r"refit-(\d+)\.pt", p.name).group(1))
            if k != step and not (root / f"step-{k:06d}").is_dir():
                p.unlink(missing_ok=True)

    def load(self, out: str | Path, step: int) -> None:
        path = Path(out) / "checkpoints" / f"refit-{step:06d}.pt"
        if not path.is_file():
            raise ValueError(f"{path} is missing: the refit reward model of iteration {step} "
                             "cannot be resumed (start a fresh run in another output_dir)")  # fmt: skip
        self.load_state_dict(torch.load(path, weights_only=False))


def _score_vectors(
    policy,
    gens: Generations,
    *,
    temperature: float,
    pad_id: int,
    chunk_size: int = 1024,
    max_tokens_per_row: int | None = None,
) -> Tensor:
    """``[N, d]`` s_n = ∇_θ log π_θ(y_n|x_n) over the trainable parameters: one forward and one
    backward pass per sample."""  # fmt: skip
    params = [p for p in policy.parameters() if p.requires_grad]
    rows = []
    for p_ids, c_ids in zip(gens.prompt_ids, gens.completion_ids):
        lp, _ = completion_logps(policy, [p_ids], [c_ids], chunk_size=chunk_size,
                                 max_tokens_per_row=len(p_ids) + len(c_ids), pad_id=pad_id,
                                 temperature=temperature)  # fmt: skip
        grads = torch.autograd.grad(lp.sum(), params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(q) if g is None else g).reshape(-1).float()
                               for g, q in zip(grads, params)]))  # fmt: skip
    return torch.stack(rows)


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else 0.0


def _text(x) -> str:
    return x if isinstance(x, str) else x[-1]["content"]


def _key(x) -> str:
    return x if isinstance(x, str) else repr(x)


def build_refit(
    cfg: RefitRewardConfig,
    *,
    model: str,
    tokenizer: str,
    gold,
    iterations: int,
    beta: float | None,
    seed: int,
    device: torch.device | str = "cpu",
) -> RewardRefit:
    """The refit reward model over the frozen trunk at ``model`` (fp32, eager attention)."""
    from unialign.lm.model import load_policy, load_tokenizer

    trunk = load_policy(model, dtype=torch.float32, attn_implementation="eager").to(device)
    budget = cfg.label_budget or iterations * cfg.labels_per_iteration
    return RewardRefit(cfg, trunk, load_tokenizer(tokenizer), gold, budget=budget,
                       beta=cfg.beta or beta, seed=seed)  # fmt: skip
