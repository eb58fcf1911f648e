"""Typed configs at the entry points: YAML file + command-line flags → a validated model.

Each command has one flat pydantic model whose fields carry a ``description``. The CLI flags
are derived from the model (``--field-name VALUE``), so a field is documented once. Validation
happens here, before any model or environment is built, and every error names the field
(and the file it came from).
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

__all__ = ["ConfigError", "add_config_flags", "load_config", "dump_config"]


class ConfigError(ValueError):
    """A configuration problem; the message names the file and field."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: Any) -> Any:
    """The argparse ``type`` for a field annotation (Optional[X] → X, Literal → str)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else str
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0])
    if annotation in (int, float, str):
        return annotation
    return str  # lists, dicts, paths: parsed as YAML text below


def add_config_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add one ``--field-name`` flag per field of ``model`` (defaults stay ``None`` so that
    only flags actually given override the file)."""
    group = parser.add_argument_group(f"{model.__name__} fields (override the --config file)")
    for name, info in model.model_fields.items():
        ann = info.annotation
        help_text = (info.description or "").replace("%", "%%")
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = info.default
        if ann is bool:
            group.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {default})",
            )
            continue
        choices = None
        if typing.get_origin(ann) is typing.Literal:
            choices = list(typing.get_args(ann))
        typ = _scalar_type(ann)
        group.add_argument(
            _flag(name),
            dest=name,
            type=typ if typ is not str or choices else str,
            choices=choices,
            default=None,
            metavar=name.upper() if not choices else None,
            help=f"{help_text} (default: {default})",
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of field: value")
    return data


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> M:
    """Merge a YAML file and flag overrides (flags win) and validate into ``model``.

    Unknown fields are errors (a typo must not silently fall back to a default).
    """
    source = str(path) if path else "command line"
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, str) and typing.get_origin(model.model_fields[key].annotation) in (
            list,
            dict,
        ):
            value = yaml.safe_load(value)
        data[key] = value
    unknown = sorted(set(data) - set(model.model_fields))
    if unknown:
        valid = ", ".join(model.model_fields)
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; valid fields: {valid}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if loc:
                lines.append(f"  field '{loc}': {msg} (got {err.get('input')!r})")
            else:  # a cross-field check: its message names the fields itself
                lines.append(f"  {msg}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved configuration next to a run's outputs (YAML)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def changed_fields(cfg: BaseModel, names: typing.Iterable[str]) -> list[str]:
    """The fields among ``names`` whose value differs from their default.

    Cross-field rules ("LoRA fields need finetune: lora") must ask this, not whether a field
    was *given*: the ``config.yaml`` a run writes lists every field, and ``--resume`` reads it.
    """
    fields = type(cfg).model_fields
    return [n for n in names if getattr(cfg, n) != fields[n].get_default(call_default_factory=True)]
