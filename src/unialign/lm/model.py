"""Loading and saving the policy: tokenizer, causal LM (full or LoRA), final export.

Components take plain arguments, not the config object, so that notebooks and benchmarks can
call them directly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

__all__ = ["load_tokenizer", "load_policy", "frozen_copy", "is_lora", "save_policy"]


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(path)``; a missing pad token falls back to EOS (the
    pad id only fills packed rows, it is never scored)."""
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(
    path: str,
    *,
    dtype: torch.dtype,
    attn_implementation: str,
    lora: dict | None = None,
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    """The causal LM to train.

    Args:
        path: local directory (or reachable hub id) for ``from_pretrained``.
        dtype: weight dtype (the training runs in it; bf16 means bf16 weights and AdamW
            states, as in the anchors' TRL configuration).
        attn_implementation: ``sdpa`` / ``eager`` / ``flex_attention``.
        lora: ``None`` for full fine-tuning, else ``{r, alpha, dropout, target_modules}``;
            an empty ``target_modules`` adapts every linear layer except the LM head.
        gradient_checkpointing: recompute activations in the backward pass.
    """
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation
    )
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model.enable_input_require_grads()
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        targets: Sequence[str] | str = lora["target_modules"] or "all-linear"
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )
    return model


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A separate, frozen reference model (full fine-tuning without precomputed log-probs)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def save_policy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    merge_lora: bool = True,
    state_dict: dict | None = None,
) -> dict[str, str]:
    """Write the trained policy with its tokenizer; returns ``{kind: directory}``.

    Full fine-tuning writes ``out_dir/model``. LoRA writes the adapter to ``out_dir/adapter``
    and, with ``merge_lora``, the merged weights to ``out_dir/model`` (loadable without peft).
    Merging modifies ``model`` in place, so call this last.
    """
    out = Path(out_dir)
    paths: dict[str, str] = {}
    if is_lora(model):
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        paths["adapter"] = str(out / "adapter")
        if not merge_lora:
            return paths
        model = model.merge_and_unload()
        state_dict = None
    model.save_pretrained(out / "model", state_dict=state_dict)
    tokenizer.save_pretrained(out / "model")
    paths["model"] = str(out / "model")
    return paths
