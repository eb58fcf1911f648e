"""Judges that are plain Python functions, named by a ``module:function`` or ``file.py:function``
spec.

- a reward function ``(prompts, completions) -> list[float]`` is a :class:`ScoreJudge`
  (:func:`load_reward_function`);
- a pairwise preference function ``(prompts, completions_a, completions_b) -> list[float]``
  of P(a ≻ b) is a :class:`PairJudge` (:func:`load_preference_function`); it need not be
  transitive, and may return NaN to skip a pair.

A spec names a function by module (``my_pkg.rewards:length_reward``, imported from
``sys.path``) or by file (``path/to/rewards.py:length_reward``, relative to the working
directory; the file is executed once per process as its own module, and its directory is *not*
added to ``sys.path``). ``Class.method`` after the colon reaches an attribute of an attribute.
Every loading error is a :class:`JudgeConfigError` naming the spec and saying what to do.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from unialign.feedback.judges import JudgeConfigError, JudgeError
from unialign.feedback.types import Text

__all__ = [
    "PreferenceFunctionJudge",
    "RewardFunctionJudge",
    "load_callable",
    "load_preference_function",
    "load_reward_function",
]

_SPEC_FORMS = "'module:function' or 'path/to/file.py:function'"


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _load_file(target: str, spec: str, what: str) -> ModuleType:
    path = Path(target).expanduser()
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise JudgeConfigError(
            f"{what} {spec!r}: the file {target} {where} (resolved to {path.resolve()}); give "
            "the path of a .py file, relative to the working directory or absolute"
        )
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"_unialign_judge_{resolved.stem}_{digest}"
    if name in sys.modules:  # loaded before in this process: run the file only once
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise JudgeConfigError(f"{what} {spec!r}: cannot load {resolved} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before executing it: dataclasses and pickling look it up
    try:
        module_spec.loader.exec_module(module)
    except BaseException as err:
        del sys.modules[name]
        if not isinstance(err, Exception):
            raise
        raise JudgeConfigError(
            f"{what} {spec!r}: executing {resolved} raised {type(err).__name__}: {err}; fix "
            "the file (it is run once, like an import)"
        ) from err
    return module


def _load_module(target: str, spec: str, what: str) -> ModuleType:
    if not all(part.isidentifier() for part in target.split(".")):
        raise JudgeConfigError(
            f"{what} {spec!r}: {target!r} is neither a dotted module name nor a path to a .py "
            f"file; write {_SPEC_FORMS}"
        )
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if target == missing or target.startswith(missing + "."):
            raise JudgeConfigError(
                f"{what} {spec!r}: no module named {missing!r}; install it or put its directory "
                "on PYTHONPATH, or name the file instead: 'path/to/file.py:function'"
            ) from err
        raise JudgeConfigError(
            f"{what} {spec!r}: importing {target!r} failed because it imports the missing "
            f"module {missing!r}; install that module"
        ) from err
    except Exception as err:
        raise JudgeConfigError(
            f"{what} {spec!r}: importing {target!r} raised {type(err).__name__}: {err}"
        ) from err


def load_callable(spec: str, *, what: str = "function") -> Callable:
    """The callable that ``spec`` (``module:attr`` or ``path/to/file.py:attr``) names.

    ``what`` names the callable's role in error messages (``reward function``, ...). Raises
    :class:`JudgeConfigError` for a malformed spec, a missing file or module, a module that
    fails to import, a missing attribute, or an attribute that is not callable.
    """
    if not isinstance(spec, str):
        raise JudgeConfigError(f"{what} spec must be a string {_SPEC_FORMS}, got {spec!r}")
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise JudgeConfigError(
            f"{what} spec {spec!r} must be {_SPEC_FORMS} (a colon before the function's name)"
        )
    if _is_file_spec(target):
        module = _load_file(target, spec, what)
    else:
        module = _load_module(target, spec, what)
    obj: object = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = target if i == 0 else f"{target}:{'.'.join(attr.split('.')[:i])}"
            defined = sorted(
                n for n, v in vars(obj).items() if callable(v) and not n.startswith("_")
            )[:12] if hasattr(obj, "__dict__") else []  # fmt: skip
            hint = f"; it defines: {', '.join(defined)}" if defined else ""
            raise JudgeConfigError(f"{what} {spec!r}: {owner} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise JudgeConfigError(
            f"{what} {spec!r}: {attr} is a {type(obj).__name__}, not a function; name a "
            "function (or any callable) defined in it"
        )
    return obj


def _check_arity(fn: Callable, n_args: int, spec: str, what: str, signature: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: let the call decide
        return
    try:
        sig.bind(*([None] * n_args))
    except TypeError as err:
        raise JudgeConfigError(
            f"{what} {spec!r} must accept {n_args} positional arguments {signature}, but its "
            f"signature is {sig} ({err})"
        ) from err


def _default_name(spec: str) -> str:
    return spec.rpartition(":")[2]


def _as_list(values: object, judge: str) -> list:
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise JudgeError(
            f"judge {judge!r} returned a {type(values).__name__}; it must return a list with "
            "one number per sample"
        )
    return list(values)  # a list, tuple, numpy array or 1-d tensor


class RewardFunctionJudge:
    """A :class:`ScoreJudge` calling ``fn(prompts, completions) -> list[float]``.

    Named ``judge:<name>`` (default: the function's name in the spec). The values are returned
    as the function gives them; :func:`checked_scores` enforces the count and finiteness.
    """

    def __init__(self, fn: Callable, *, name: str) -> None:
        self.fn = fn
        self._name = f"judge:{name}"

    @property
    def name(self) -> str:
        return self._name

    def score(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[float]:
        """``fn(prompts, completions)`` as a list (its elements unchecked)."""
        return _as_list(self.fn(list(prompts), list(completions)), self._name)


class PreferenceFunctionJudge:
    """A :class:`PairJudge` calling ``fn(prompts, completions_a, completions_b)`` → P(a ≻ b).

    Named ``judge:<name>`` (default: the function's name in the spec). The function may be
    intransitive and may return NaN to skip a pair; :func:`checked_preferences` enforces the
    count and the range [0, 1].
    """

    def __init__(self, fn: Callable, *, name: str) -> None:
        self.fn = fn
        self._name = f"judge:{name}"

    @property
    def name(self) -> str:
        return self._name

    def compare(
        self,
        prompts: Sequence[Text],
        completions_a: Sequence[Text],
        completions_b: Sequence[Text],
    ) -> list[float]:
        """``fn(prompts, completions_a, completions_b)`` as a list (its elements unchecked)."""
        values = self.fn(list(prompts), list(completions_a), list(completions_b))
        return _as_list(values, self._name)


def load_reward_function(spec: str, *, name: str | None = None) -> RewardFunctionJudge:
    """A :class:`ScoreJudge` from a reward function named by ``spec``.

    ``spec`` is ``module:function`` or ``path/to/file.py:function``; the function takes
    ``(prompts, completions)`` (two equally long lists of strings or message lists) and returns
    one finite float per completion. ``name`` (default: the function's name) becomes the
    labeller name ``judge:<name>``. Raises :class:`JudgeConfigError` naming the spec.
    """
    what = "reward function"
    fn = load_callable(spec, what=what)
    _check_arity(fn, 2, spec, what, "(prompts, completions)")
    return RewardFunctionJudge(fn, name=name or _default_name(spec))


def load_preference_function(spec: str, *, name: str | None = None) -> PreferenceFunctionJudge:
    """A :class:`PairJudge` from a pairwise preference function named by ``spec``.

    The function takes ``(prompts, completions_a, completions_b)`` and returns, per pair, the
    probability P(a ≻ b) ∈ [0, 1] (NaN to skip the pair). Raises :class:`JudgeConfigError`
    naming the spec.
    """
    what = "preference function"
    fn = load_callable(spec, what=what)
    _check_arity(fn, 3, spec, what, "(prompts, completions_a, completions_b)")
    return PreferenceFunctionJudge(fn, name=name or _default_name(spec))
