"""A reward model (or an ensemble of them) loaded from local directories, as a score judge.

Each member is an ``AutoModelForSequenceClassification`` with one output (``num_labels = 1``)
and its tokenizer, both loaded with ``from_pretrained(path)``. A sample's score is the head's
output on the whole text, prompt followed by completion:

- conversational (message lists): the tokenizer's chat template applied to the full
  conversation (prompt messages + completion messages), tokenized without adding special
  tokens again; a tokenizer without a chat template gets the messages' contents joined by
  newlines (a warning says so once);
- standard (strings): ``prompt + completion`` with the tokenizer's special tokens, plus the EOS
  token when ``append_eos`` (as TRL's ``RewardTrainer`` tokenizes standard-format training
  data, so a reward model trained there reads its score at the same position).

Texts longer than ``max_length`` tokens are truncated on the **left**: the head reads the
last token, so the end of the completion is kept and the start of the prompt dropped. Scoring
runs in eval mode under ``torch.inference_mode()``, in batches of ``batch_size`` sorted by
length (less padding; results are returned in input order).

Several paths make an ensemble of K members, aggregated per sample by ``mean``, ``min`` (worst
case) or ``uwo`` (mean − λ·population variance; :func:`unialign.losses.reward.ensemble_uwo`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from unialign.feedback.judges import JudgeConfigError, JudgeError
from unialign.feedback.types import Text, text_format
from unialign.losses.reward import ensemble_mean, ensemble_min, ensemble_uwo

__all__ = ["AGGREGATES", "RewardModelJudge", "RewardModelMember"]

log = logging.getLogger(__name__)

AGGREGATES = ("mean", "min", "uwo")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RewardModelMember:
    """One reward model and its tokenizer, loaded from ``path``; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | None = None,
        max_length: int = 1024,
        append_eos: bool = True,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            where = "is a file, not a directory" if self.path.exists() else "does not exist"
            raise JudgeConfigError(
                f"reward model path {str(path)!r} {where}; give a local directory written by "
                "save_pretrained (config.json, weights and the tokenizer files)"
            )
        if dtype is not None and dtype not in _DTYPES:
            raise JudgeConfigError(
                f"reward model dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}"
            )
        if max_length < 2:
            raise JudgeConfigError(f"reward model max_length must be >= 2, got {max_length}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except Exception as err:
            raise JudgeConfigError(
                f"cannot load the tokenizer of reward model {self.path}: {type(err).__name__}: "
                f"{err}; save it next to the model (tokenizer.save_pretrained(path))"
            ) from err
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype=_DTYPES[dtype] if dtype else "auto"
            )
        except Exception as err:
            raise JudgeConfigError(
                f"cannot load reward model {self.path} as a sequence-classification model: "
                f"{type(err).__name__}: {err}"
            ) from err
        if model.config.num_labels != 1:
            raise JudgeConfigError(
                f"reward model {self.path} has num_labels = {model.config.num_labels}; a reward "
                "model has one output (num_labels = 1)"
            )
        self.model = model.to(device).eval()
        self.max_length = int(max_length)
        self.append_eos = bool(append_eos)
        self._warned_no_template = False
        # The head reads the last non-pad token (transformers' sequence classification), so the
        # model must know the pad id; without any pad token, batches of one need no padding.
        text_cfg = self.model.config.get_text_config()
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if text_cfg.pad_token_id is None and pad is not None:
            text_cfg.pad_token_id = pad
        self.pad_id = text_cfg.pad_token_id

    def _ids(self, prompt: Text, completion: Text, i: int) -> list[int]:
        tok = self.tokenizer
        fmt = text_format(prompt, f"prompts[{i}]")
        if text_format(completion, f"completions[{i}]") != fmt:
            raise ValueError(
                f"sample {i}: the prompt is {fmt} but the completion is not; both must be "
                "strings or both message lists"
            )
        if fmt == "conversational":
            conversation = [*prompt, *completion]
            if tok.chat_template:
                text = tok.apply_chat_template(conversation, tokenize=False)
            else:
                if not self._warned_no_template:
                    log.warning(
                        "reward model %s: the tokenizer has no chat template; conversational "
                        "samples are scored on their messages' contents joined by newlines",
                        self.path,
                    )
                    self._warned_no_template = True
                text = "\n".join(m["content"] for m in conversation)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            text = prompt + completion
            if self.append_eos and tok.eos_token and not text.endswith(tok.eos_token):
                text += tok.eos_token
            ids = tok(text)["input_ids"]
        return list(ids)[-self.max_length :]  # left truncation: keep the completion's end

    def score(
        self, prompts: Sequence[Text], completions: Sequence[Text], *, batch_size: int
    ) -> Tensor:
        """``[N]`` float32 scores on the model's device, in input order."""
        ids = [self._ids(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions))]
        if self.pad_id is None:
            batch_size = 1
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        device = next(self.model.parameters()).device
        out = torch.empty(len(ids), dtype=torch.float32, device=device)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), width), self.pad_id or 0, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):  # right padding
                    input_ids[j, : len(ids[i])] = torch.tensor(ids[i])
                    mask[j, : len(ids[i])] = 1
                logits = self.model(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device)
                ).logits
                out[torch.tensor(rows, device=device)] = logits[:, 0].float()
        return out


class RewardModelJudge:
    """A :class:`ScoreJudge`: one reward model or an ensemble of them (see the module docstring).

    Args:
        paths: one or more local model directories (K members).
        aggregate: ``mean``, ``min`` or ``uwo``, how K > 1 members' scores combine.
        uwo_coef: λ ≥ 0 of ``uwo``: mean − λ·population variance over the members.
        batch_size: samples per forward pass.
        max_length: tokens per sample after left truncation.
        append_eos: add the EOS token to standard-format texts that do not end with it.
        device: where the members run (default: CUDA when available, else CPU).
        dtype: ``float32``, ``bfloat16``, ``float16`` or None (the dtype the weights were saved
            in).
        name: the judge's name (``judge:<name>``); default ``rm:<dir>`` for one member,
            ``rm-<aggregate>:<dir>+<dir>…`` for an ensemble.
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        aggregate: Literal["mean", "min", "uwo"] = "mean",
        uwo_coef: float = 0.1,
        batch_size: int = 8,
        max_length: int = 1024,
        append_eos: bool = True,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        name: str | None = None,
    ) -> None:
        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        if not paths:
            raise JudgeConfigError("a reward-model judge needs at least one model path")
        if aggregate not in AGGREGATES:
            raise JudgeConfigError(
                f"reward model aggregate must be one of {AGGREGATES}, got {aggregate!r}"
            )
        if not uwo_coef >= 0:
            raise JudgeConfigError(f"reward model uwo_coef must be >= 0, got {uwo_coef!r}")
        if batch_size < 1:
            raise JudgeConfigError(f"reward model batch_size must be >= 1, got {batch_size}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.members = [
            RewardModelMember(
                p, device=device, dtype=dtype, max_length=max_length, append_eos=append_eos
            )
            for p in paths
        ]
        self.aggregate = aggregate
        self.uwo_coef = float(uwo_coef)
        self.batch_size = int(batch_size)
        if name is None:
            dirs = "+".join(m.path.name for m in self.members)
            name = f"rm:{dirs}" if len(self.members) == 1 else f"rm-{aggregate}:{dirs}"
        self._name = f"judge:{name}"

    @property
    def name(self) -> str:
        return self._name

    def member_scores(self, prompts: Sequence[Text], completions: Sequence[Text]) -> Tensor:
        """``[K, N]`` float32 CPU scores of every member (e.g. to log the members' spread)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [m.score(prompts, completions, batch_size=self.batch_size) for m in self.members]
        return torch.stack([r.cpu() for r in rows])

    def score(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[float]:
        """One aggregated score per (prompt, completion)."""
        if len(prompts) == 0:
            return []
        members = self.member_scores(prompts, completions)
        bad = (~torch.isfinite(members)).nonzero()
        if len(bad):
            k, i = (int(x) for x in bad[0])
            raise JudgeError(
                f"judge {self._name!r}: member {self.members[k].path} scored sample {i} "
                f"{float(members[k, i])!r} (non-finite: check the weights and dtype)"
            )
        if self.aggregate == "mean":
            scores = ensemble_mean(members)
        elif self.aggregate == "min":
            scores = ensemble_min(members)
        else:
            scores = ensemble_uwo(members, coef=self.uwo_coef)
        return scores.tolist()
