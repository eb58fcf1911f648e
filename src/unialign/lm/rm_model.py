"""The reward model of ``unialign train rm``: loading, the forward pass, export, and the GPM judge.

A reward model is ``AutoModelForSequenceClassification.from_pretrained(base, num_labels=n)``:
a causal LM's trunk plus a linear head read at the last non-pad token (transformers' pooling,
the same forward :class:`~unialign.feedback.reward_models.RewardModelJudge` runs). The head
width ``n`` says what the model is:

- ``n = 1``: one scalar reward;
- ``n = K``: an ensemble of K scalar heads on one shared trunk;
- ``n = 2k``: a general-preference-model (GPM) embedding.

An ensemble of K LoRA adapters instead keeps ``n = 1`` and K adapter sets (each with its own
copy of the head, peft's ``modules_to_save``) over one frozen base; :class:`RewardNet` switches
the active adapter between forward passes.

Export writes what the judges load as is: a single scalar model to ``output_dir/model``; an
ensemble as K single-head models ``output_dir/members/member-<k>`` (the shared trunk is copied
into each, so ``RewardModelJudge(paths, aggregate=...)`` loads them unchanged); a GPM to
``output_dir/model`` with ``config.unialign_gpm = {tau, normalize}``, which :class:`GPMJudge`
(a :class:`~unialign.feedback.judges.PairJudge`) reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from unialign.feedback.judges import JudgeConfigError
from unialign.feedback.reward_models import RewardModelMember
from unialign.feedback.types import Text
from unialign.lm.model import is_lora, save_policy
from unialign.losses.reward import general_preference

__all__ = [
    "GPMJudge",
    "RewardNet",
    "export_reward_model",
    "gpm_embeddings",
    "load_reward_model",
    "member_names",
    "pad_batch",
]

#: The attribute that holds the classification head in transformers' causal-LM classifiers.
_HEAD_ATTRS = ("score", "classifier")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def member_names(k: int) -> list[str]:
    """Names of K ensemble members (adapter names and output directories)."""
    return [f"member-{i}" for i in range(k)]


def _head(model: nn.Module) -> tuple[nn.Module, str]:
    """(owner module, attribute) of the linear head of a (merged, non-peft) classifier."""
    for attr in _HEAD_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Linear):
            return model, attr
    raise ValueError(
        f"{type(model).__name__} has no linear head named {' or '.join(_HEAD_ATTRS)}; "
        "train rm supports transformers' *ForSequenceClassification causal LMs"
    )


def _set_pad(model: nn.Module, pad_token_id: int | None) -> None:
    """The head reads the last token that is not ``pad_token_id``: the model must know it."""
    model.config.pad_token_id = pad_token_id
    model.config.get_text_config().pad_token_id = pad_token_id


def load_reward_model(
    path: str,
    *,
    num_outputs: int,
    dtype: torch.dtype,
    attn_implementation: str,
    pad_token_id: int | None,
    lora: dict | None = None,
    adapters: int = 1,
    gradient_checkpointing: bool = False,
    seed: int = 0,
) -> RewardNet:
    """The reward model to train, wrapped in a :class:`RewardNet`.

    Args:
        path: the base causal LM (a local directory); a new head of width ``num_outputs`` is
            initialised (normal, std ``initializer_range``) from the torch RNG: seed it first.
        num_outputs: head width (1, K shared-trunk heads, or the GPM's 2k).
        dtype, attn_implementation: as in :func:`unialign.lm.model.load_policy`.
        pad_token_id: written to the config (transformers' pooling needs it).
        lora: ``None`` for full fine-tuning, else ``{r, alpha, dropout, target_modules}``
            (task type SEQ_CLS: the head is trained in full alongside the adapter).
        adapters: number of LoRA adapters (K for an adapter ensemble); each gets its own copy
            of the head, re-initialised from ``seed`` so that the members start apart.
        gradient_checkpointing: recompute activations in the backward pass.
        seed: seeds the adapter heads' re-initialisation.
    """
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_outputs, dtype=dtype, attn_implementation=attn_implementation
    )
    _set_pad(model, pad_token_id)
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model.enable_input_require_grads()
    if lora is None:
        return RewardNet(model)
    from peft import LoraConfig, get_peft_model

    def config() -> LoraConfig:
        return LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"] or "all-linear",
            task_type="SEQ_CLS",
        )

    names = member_names(adapters) if adapters > 1 else ["default"]
    model = get_peft_model(model, config(), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config())
    if adapters > 1:  # peft copies one head into every adapter: give each its own init
        std = getattr(model.config, "initializer_range", 0.02)
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if ".modules_to_save." in name and name.endswith(".weight"):
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
    return RewardNet(model, names if adapters > 1 else ())


class RewardNet(nn.Module):
    """The trained module: a right-padded batch → head outputs ``[B, n]`` (float32).

    With K LoRA adapters (``adapter_names``), :meth:`select` makes member ``i`` the active
    adapter before a forward; every adapter's weights stay trainable throughout (peft's
    ``set_adapter`` would freeze the inactive ones, which would change the set of trainable
    parameters a checkpoint holds).
    """

    def __init__(self, model: nn.Module, adapter_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.adapter_names = list(adapter_names)
        if self.adapter_names:
            params = dict(model.named_parameters())
            self._groups = [
                [p for n, p in params.items() if f".{a}." in n] for a in self.adapter_names
            ]
            for group in self._groups:
                for p in group:
                    p.requires_grad_(True)

    @property
    def passes(self) -> int:
        """Forward passes per batch: K for an adapter ensemble, else 1."""
        return max(1, len(self.adapter_names))

    def member_groups(self) -> list[list[nn.Parameter]]:
        """The trainable parameters of each adapter member (empty without adapters)."""
        return list(self._groups) if self.adapter_names else []

    def select(self, i: int) -> None:
        """Make adapter member ``i`` active (a no-op without adapters)."""
        if not self.adapter_names:
            return
        self.model.set_adapter(self.adapter_names[i])
        for group in self._groups:
            for p in group:
                p.requires_grad_(True)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` ``[B, T]`` (as the judge pads)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[j, : len(s)] = 1
    return ids, mask


def gpm_embeddings(outputs: Tensor, *, normalize: bool) -> Tensor:
    """GPM preference embeddings from the head's ``[B, 2k]`` outputs: unit L2 norm when
    ``normalize`` (Zhang et al. 2024, arXiv 2410.02197, embed each response on the unit
    sphere; their prompt-dependent eigenvalue gate is not used, i.e. λ_l = 1)."""
    return F.normalize(outputs, dim=-1) if normalize else outputs


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _save_split_heads(model: nn.Module, tokenizer, root: Path) -> list[str]:
    """Save a K-head classifier as K single-head models ``root/member-<k>`` (trunk copied)."""
    owner, attr = _head(model)
    head: nn.Linear = getattr(owner, attr)
    k_heads, paths = head.out_features, []
    try:
        for k, name in enumerate(member_names(k_heads)):
            single = nn.Linear(head.in_features, 1, bias=head.bias is not None)
            single = single.to(device=head.weight.device, dtype=head.weight.dtype)
            with torch.no_grad():
                single.weight.copy_(head.weight[k : k + 1])
                if head.bias is not None:
                    single.bias.copy_(head.bias[k : k + 1])
            setattr(owner, attr, single)
            model.config.num_labels = 1
            model.save_pretrained(root / name)
            tokenizer.save_pretrained(root / name)
            paths.append(str(root / name))
    finally:
        setattr(owner, attr, head)
        model.config.num_labels = k_heads
    return paths


def export_reward_model(
    net: RewardNet,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    base_path: str,
    dtype: torch.dtype,
    merge_lora: bool = True,
    gpm: dict | None = None,
) -> dict:
    """Write the trained reward model(s); returns ``{kind: directory or [directories]}``.

    - one scalar head or a GPM: ``out_dir/model`` (LoRA: ``out_dir/adapter`` too; without
      ``merge_lora`` only the adapter), via :func:`unialign.lm.model.save_policy`;
    - K heads on a shared trunk: ``out_dir/members/member-<k>``, one single-head model each
      (LoRA: the adapter with the K-wide head in ``out_dir/adapter``);
    - K LoRA adapters: each adapter (with its head) in ``out_dir/adapters/member-<k>``, and
      merged into a fresh copy of ``base_path`` in ``out_dir/members/member-<k>``.

    ``gpm`` (``{tau, normalize}``) is stored as ``config.unialign_gpm``. Merging modifies the
    model in place: call this last.
    """
    out = Path(out_dir)
    model = net.model
    base = model.get_base_model() if is_lora(model) else model
    if gpm is not None:
        base.config.unialign_gpm = dict(gpm)
    if net.adapter_names:
        from peft import PeftModel

        model.save_pretrained(out / "adapters")  # one sub-directory per adapter name
        adapters, members = [], []
        for name in net.adapter_names:
            adapter_dir = out / "adapters" / name
            tokenizer.save_pretrained(adapter_dir)
            fresh = AutoModelForSequenceClassification.from_pretrained(
                base_path, num_labels=1, dtype=dtype
            )
            _set_pad(fresh, base.config.pad_token_id)
            merged = PeftModel.from_pretrained(fresh, adapter_dir).merge_and_unload()
            merged.save_pretrained(out / "members" / name)
            tokenizer.save_pretrained(out / "members" / name)
            adapters.append(str(adapter_dir))
            members.append(str(out / "members" / name))
        return {"adapters": adapters, "members": members}
    if gpm is None and base.config.num_labels > 1:
        paths: dict = {}
        if is_lora(model):
            model.save_pretrained(out / "adapter")
            tokenizer.save_pretrained(out / "adapter")
            paths["adapter"] = str(out / "adapter")
            model = model.merge_and_unload()
        paths["members"] = _save_split_heads(model, tokenizer, out / "members")
        return paths
    return save_policy(model, tokenizer, out, merge_lora=merge_lora)


# ---------------------------------------------------------------------------------------------
# the GPM as a pairwise judge
# ---------------------------------------------------------------------------------------------
class GPMJudge:
    """A :class:`~unialign.feedback.judges.PairJudge` from a GPM written by ``train rm``.

    ``P(a ≻ b) = σ(s(a, b)/τ)`` with ``s = ⟨R v_a, v_b⟩`` (:func:`general_preference`) on the
    preference embeddings of prompt+completion. The text of a sample is exactly what
    :class:`~unialign.feedback.reward_models.RewardModelJudge` scores (chat template of the
    whole conversation, or prompt + completion + EOS; left truncation to ``max_length``): the
    judge's own text-to-ids method is called, so the two cannot drift apart.

    Exact antisymmetry: every distinct text is embedded once, in batches fixed by the sorted
    set of texts, so ``s(b, a) = −s(a, b)`` bit for bit; and ``P`` is taken as σ(x) for x ≥ 0
    and 1 − σ(−x) for x < 0, so ``P(a ≻ b) + P(b ≻ a) = 1`` exactly in floating point (the
    subtraction 1 − σ, σ ∈ [½, 1], is exact) and ``P(a ≻ a) = ½``.

    Args:
        path: the model directory (``output_dir/model`` of a ``head: gpm`` run).
        tau: temperature; default the one it was trained with.
        batch_size, max_length, append_eos, device, dtype: as for ``RewardModelJudge``.
        name: labeller name ``judge:<name>``; default ``gpm:<dir>``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        tau: float | None = None,
        batch_size: int = 8,
        max_length: int = 1024,
        append_eos: bool = True,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        name: str | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise JudgeConfigError(f"GPM path {str(path)!r} is not a directory")
        if dtype is not None and dtype not in _DTYPES:
            raise JudgeConfigError(f"GPM dtype must be one of {sorted(_DTYPES)} or None")
        if batch_size < 1 or max_length < 2:
            raise JudgeConfigError("GPM batch_size must be >= 1 and max_length >= 2")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, dtype=_DTYPES[dtype] if dtype else "auto"
        )
        gpm = getattr(model.config, "unialign_gpm", None)
        if not isinstance(gpm, dict):
            raise JudgeConfigError(
                f"{self.path} is not a GPM written by `unialign train rm` (its config has no "
                "unialign_gpm entry); a scalar reward model loads with RewardModelJudge"
            )
        self.tau = float(tau if tau is not None else gpm["tau"])
        if not self.tau > 0:
            raise JudgeConfigError(f"GPM tau must be > 0, got {self.tau}")
        self.normalize = bool(gpm["normalize"])
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(device).eval()
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        if model.config.get_text_config().pad_token_id is None and pad is not None:
            _set_pad(model, pad)
        self.pad_id = model.config.get_text_config().pad_token_id
        # the attributes RewardModelMember._ids reads (the judge's one text-to-ids rule)
        self.max_length, self.append_eos, self._warned_no_template = max_length, append_eos, False
        self.batch_size = batch_size
        self._name = f"judge:{name or 'gpm:' + self.path.name}"

    @property
    def name(self) -> str:
        return self._name

    def _ids(self, prompt: Text, completion: Text, i: int) -> list[int]:
        return RewardModelMember._ids(self, prompt, completion, i)  # type: ignore[arg-type]

    @torch.inference_mode()
    def _embed(self, seqs: list[tuple[int, ...]]) -> dict[tuple[int, ...], Tensor]:
        unique = sorted(set(seqs), key=lambda s: (len(s), s))
        batch = self.batch_size if self.pad_id is not None else 1
        device = next(self.model.parameters()).device
        out: dict[tuple[int, ...], Tensor] = {}
        for start in range(0, len(unique), batch):
            rows = unique[start : start + batch]
            ids, mask = pad_batch(rows, self.pad_id or 0)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            emb = gpm_embeddings(logits.float(), normalize=self.normalize).cpu()
            out.update(zip(rows, emb))
        return out

    def embeddings(self, prompts: Sequence[Text], completions: Sequence[Text]) -> Tensor:
        """``[N, 2k]`` float32 preference embeddings (normalized if trained so)."""
        seqs = [tuple(self._ids(p, c, i)) for i, (p, c) in enumerate(zip(prompts, completions))]
        table = self._embed(seqs)
        return torch.stack([table[s] for s in seqs])

    def compare(
        self,
        prompts: Sequence[Text],
        completions_a: Sequence[Text],
        completions_b: Sequence[Text],
    ) -> list[float]:
        """P(a ≻ b) per pair (see the class docstring)."""
        n = len(prompts)
        if not len(completions_a) == len(completions_b) == n:
            raise ValueError("one completion_a and one completion_b per prompt")
        if n == 0:
            return []
        a = [tuple(self._ids(p, c, i)) for i, (p, c) in enumerate(zip(prompts, completions_a))]
        b = [tuple(self._ids(p, c, i)) for i, (p, c) in enumerate(zip(prompts, completions_b))]
        table = self._embed(a + b)
        va = torch.stack([table[s] for s in a])
        vb = torch.stack([table[s] for s in b])
        score = general_preference(va, vb, tau=self.tau).metrics["preference/score"]
        x = score.double() / self.tau
        p = torch.where(x >= 0, torch.sigmoid(x), 1.0 - torch.sigmoid(-x))
        return p.tolist()
