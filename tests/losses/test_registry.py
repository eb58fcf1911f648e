"""Invariants and bad-input checks for every objective in the registry.

Parametrized over ``REGISTRY`` itself: a new objective is covered as soon as it is registered,
with inputs built by ``registry_inputs`` from its kind and signature (an objective no input
builder knows fails, saying what to add). Per objective:

- registry metadata: defaults equal the function's keyword-only defaults; a docs entry;
- ordinary inputs: the return type, per-example shape, finite values and gradients, detached
  metrics of the per-example shape;
- extreme inputs (|ℓ| or |R| = 1e3) in float32 and bfloat16: finite values and gradients;
- float64 ``gradcheck`` on small inputs;
- the symmetry / zero-margin invariants of its kind (``registry_inputs.LAYOUTS``);
- ``ValueError`` naming the argument for a wrong shape, a mismatched batch size, a wrong dtype,
  NaN/inf inputs, and an invalid value of every hyperparameter.

Hand-derived values live in the per-family test files.
"""

import re
import typing
from pathlib import Path

import pytest
import torch

from unialign.losses import REGISTRY, LossOutput, LossSpec
from unialign.losses._core import LossKind

from .registry_inputs import (
    Layout,
    call,
    keyword_defaults,
    layout_of,
    make,
    resolve_layout,
)

NAMES = sorted(REGISTRY)
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _names(arg: str) -> str:
    """A regex that finds ``arg`` as a whole word (``ref`` must not match ``ref_chosen``)."""
    return rf"(?<![\w/]){re.escape(arg)}(?![\w])"


# ---------------------------------------------------------------------------------------------
# Registry metadata
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registry_defaults_equal_signature_defaults(name):
    """The registry's hparams are exactly the function's keyword-only defaults (same names, same
    values, same types): configs, the CLI and docs read the registry, callers the signature."""
    spec = REGISTRY[name]
    signature = keyword_defaults(spec.fn)
    problems = [
        f"{name}: parameter {p!r} has registry default {spec.hparams[p]!r} but signature "
        f"default {signature[p]!r}"
        for p in sorted(spec.hparams.keys() & signature.keys())
        if type(spec.hparams[p]) is not type(signature[p]) or spec.hparams[p] != signature[p]
    ]
    problems += [
        f"{name}: parameter {p!r} has a signature default ({signature[p]!r}) but no registry entry"
        for p in sorted(signature.keys() - spec.hparams.keys())
    ]
    problems += [
        f"{name}: registry hyperparameter {p!r} is not a keyword-only parameter with a default"
        for p in sorted(spec.hparams.keys() - signature.keys())
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_is_named_described_and_documented(name):
    spec = REGISTRY[name]
    assert spec.name == name
    assert spec.kind in typing.get_args(LossKind), spec.kind
    assert spec.description and spec.paper
    page = DOCS / f"losses-{spec.family}.md"
    assert page.exists(), f"{name}: family {spec.family!r} has no docs page {page.name}"
    assert f"`{name}`" in page.read_text(), f"{name} is not documented in docs/{page.name}"


def test_an_unknown_kind_fails_and_says_what_to_add():
    spec = LossSpec(
        name="telepathy",
        fn=REGISTRY["sigmoid"].fn,
        family="direct",
        kind="telepathic",  # type: ignore[arg-type]
        description="-",
        paper="-",
    )
    with pytest.raises(pytest.fail.Exception, match="add a Layout"):
        resolve_layout(spec)


def test_an_unknown_signature_of_a_known_kind_fails_and_says_what_to_add():
    def odd(a, b, c, d):
        raise AssertionError("never called")

    spec = LossSpec(name="odd", fn=odd, family="reward", kind="reward", description="", paper="")
    with pytest.raises(pytest.fail.Exception, match="add a Layout"):
        resolve_layout(spec)


# ---------------------------------------------------------------------------------------------
# Values, shapes, gradients
# ---------------------------------------------------------------------------------------------


def _leaves(layout: Layout, tensors: dict) -> dict:
    return {
        f.name: tensors[f.name].detach().clone().requires_grad_(True)
        for f in layout.fields
        if f.grad
    }


def _check_gradients(layout: Layout, leaves: dict) -> None:
    """Policy-side leaves must receive a finite gradient; any other leaf that receives one must
    be finite too (an objective may ignore, e.g., the reference of an IterateLogps batch)."""
    for name, leaf in leaves.items():
        if layout.field(name).role in ("policy", "nonpos"):
            assert leaf.grad is not None, f"no gradient reaches {name}"
        if leaf.grad is not None:
            assert bool(torch.isfinite(leaf.grad).all()), (name, leaf.grad)


@pytest.mark.parametrize("name", NAMES)
def test_ordinary_inputs_shapes_and_detached_metrics(name):
    spec, layout = REGISTRY[name], layout_of(name)
    tensors = make(layout, torch.float32)
    leaves = _leaves(layout, tensors)
    raw = spec.fn(*layout.build({**tensors, **leaves}), **spec.hparams)
    if spec.kind == "aggregate":
        assert isinstance(raw, torch.Tensor), type(raw)
        values, metrics = raw, {}
    else:
        assert isinstance(raw, LossOutput), type(raw)
        values, metrics = raw.losses, raw.metrics
    assert values.shape == layout.out_shape, (values.shape, layout.out_shape)
    assert values.dtype == torch.float32
    assert values.requires_grad
    assert bool(torch.isfinite(values).all()), values
    values.sum().backward()
    _check_gradients(layout, leaves)
    for key, value in metrics.items():
        assert not value.requires_grad, f"metric {key} is not detached"
        assert value.shape == layout.out_shape, (key, value.shape)
        assert bool(torch.isfinite(value).all()), (key, value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_extreme_inputs_are_finite(name, dtype):
    spec, layout = REGISTRY[name], layout_of(name)
    tensors = make(layout, dtype, extreme=True)
    leaves = _leaves(layout, tensors)
    values, metrics = call(spec, layout, {**tensors, **leaves})
    assert values.shape == layout.out_shape
    assert bool(torch.isfinite(values).all()), values
    values.sum().backward()
    _check_gradients(layout, leaves)
    for key, value in metrics.items():
        assert not value.requires_grad, key
        assert bool(torch.isfinite(value).all()), (key, value)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    spec, layout = REGISTRY[name], layout_of(name)
    tensors = make(layout, torch.float64)
    leaves = _leaves(layout, tensors)
    names = list(leaves)

    def f(*xs):
        return call(spec, layout, {**tensors, **dict(zip(names, xs))})[0]

    assert torch.autograd.gradcheck(f, tuple(leaves.values()))


@pytest.mark.parametrize("name", NAMES)
def test_symmetry_and_zero_margin_invariants(name):
    layout = layout_of(name)
    layout.invariants(REGISTRY[name], layout)


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument
# ---------------------------------------------------------------------------------------------


def _expect_value_error(spec: LossSpec, layout: Layout, cases) -> None:
    """Run every ``(description, argument, tensors, hparams)`` case; collect those that do not
    raise a ValueError naming ``argument``, and fail once listing all of them."""
    failures = []
    for what, arg, tensors, hparams in cases:
        try:
            call(spec, layout, tensors, **hparams)
        except ValueError as e:
            if not re.search(_names(arg), str(e)):
                failures.append(f"{what}: ValueError does not name {arg!r}: {e}")
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            failures.append(f"{what}: raised {type(e).__name__} instead of ValueError: {e}")
        else:
            failures.append(f"{what}: no error")
    assert not failures, f"{spec.name}:\n" + "\n".join(failures)


def _wrong_ndim(t: torch.Tensor) -> torch.Tensor:
    return t[:, None] if t.dim() == 1 else t.reshape(-1)


def _one_more_row(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t[:1]])


@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_name_the_argument(name):
    spec, layout = REGISTRY[name], layout_of(name)
    t = make(layout)
    cases = [(f"{n} of wrong rank", n, {**t, n: _wrong_ndim(v)}, {}) for n, v in t.items()]
    if len(t) > 1:
        cases += [(f"{n} of another batch size", n, {**t, n: _one_more_row(v)}, {}) for n, v in t.items()]  # fmt: skip
    _expect_value_error(spec, layout, cases)


@pytest.mark.parametrize("name", NAMES)
def test_bad_dtypes_name_the_argument(name):
    """Numbers given as booleans (a mask passed by mistake) and booleans given as numbers."""
    spec, layout = REGISTRY[name], layout_of(name)
    t = make(layout)
    cases = [
        (f"{n} as {'float' if v.dtype == torch.bool else 'bool'}", n,
         {**t, n: v.double() if v.dtype == torch.bool else v > 0}, {})
        for n, v in t.items()
    ]  # fmt: skip
    _expect_value_error(spec, layout, cases)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_inputs_name_the_argument(name):
    spec, layout = REGISTRY[name], layout_of(name)
    t = make(layout)
    cases = []
    for n, v in t.items():
        if v.dtype == torch.bool:
            continue
        for bad in (float("nan"), float("inf")):
            w = v.clone()
            w.view(-1)[1] = bad
            cases.append((f"{n} containing {bad}", n, {**t, n: w}, {}))
    _expect_value_error(spec, layout, cases)


def _invalid_values(default):
    """Values no hyperparameter of the default's type accepts."""
    if isinstance(default, bool):
        return [1, "yes", None]
    if isinstance(default, int | float):
        return [float("nan"), float("inf"), "0.1", None, True]
    if isinstance(default, str):
        return ["no-such-option", 1, None]
    raise AssertionError(f"no invalid values known for a default of type {type(default)}")


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameters_name_the_argument(name):
    spec, layout = REGISTRY[name], layout_of(name)
    t = make(layout)
    cases = [
        (f"{p}={bad!r}", p, t, {p: bad})
        for p, default in keyword_defaults(spec.fn).items()
        for bad in _invalid_values(default)
    ]
    _expect_value_error(spec, layout, cases)
