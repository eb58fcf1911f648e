"""Agreement statistics for the labelling app's agreement page.

Labels are nominal categories {0, ½, 1} (second better, tie, first better); skips are left out.

- Cohen's κ (Cohen 1960) for two raters on their common items::

      κ = (p_o − p_e) / (1 − p_e),   p_o = (1/n) Σ_i [a_i = b_i],   p_e = Σ_c p_a(c) · p_b(c)

  where p_a(c) is the fraction of rater a's labels in category c. Undefined (NaN) when
  p_e = 1 (both raters used one and the same category throughout).
- Krippendorff's α, nominal (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"),
  over items rated by any number m_u ≥ 2 of raters (items with one rating are not pairable).
  With the coincidence matrix o_ck = Σ_u Σ_{i≠j} [v_ui = c][v_uj = k] / (m_u − 1),
  n_c = Σ_k o_ck and n = Σ_c n_c::

      α = 1 − (n − 1) · Σ_{c≠k} o_ck / Σ_{c≠k} n_c · n_k

  NaN when every pairable value is in one category (no expected disagreement).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unialign.feedback.teachers import Teacher, TeacherConfig

__all__ = [
    "AgreementReport",
    "agreement_report",
    "cohen_kappa",
    "krippendorff_alpha",
    "oracle_labels",
]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's κ of two equally long label sequences (item i rated ``a[i]`` and ``b[i]``)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs paired labels, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if p_e >= 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float:
    """Krippendorff's α (nominal) of ``units``: per item, the values its raters gave."""
    coincidence: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            coincidence[values[i], values[j]] += 1.0 / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), o in coincidence.items():
        n_c[c] += o
    n = sum(n_c.values())
    observed = sum(o for (c, k), o in coincidence.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if expected == 0.0:
        return math.nan
    return 1.0 - (n - 1.0) * observed / expected


def oracle_labels(returns: Mapping[int, tuple[float, float]]) -> dict[int, float]:
    """The simulated oracle teacher's label per query from its candidates' true returns
    (B-Pref's rational rule, ``Teacher(TeacherConfig("oracle"))``: higher return wins, ½ on
    equal returns)."""
    ids = sorted(returns)
    if not ids:
        return {}
    r = torch.tensor([returns[q] for q in ids], dtype=torch.float64)
    teacher = Teacher(TeacherConfig(kind="oracle"))
    out = teacher.label_returns(r[:, 0], r[:, 1], np.random.default_rng(0))
    return {q: float(y) for q, y in zip(ids, out.labels.tolist())}


@dataclass(frozen=True)
class AnnotatorStats:
    """One annotator's labels: counts per value, position bias, agreement with the oracle."""

    labeler: str
    labelled: int
    first: int
    second: int
    ties: int
    skipped: int
    left_share: float  # of strict preferences, the share that picked the left-hand side
    median_latency_ms: float
    oracle_n: int
    oracle_agreement: float
    oracle_kappa: float


@dataclass(frozen=True)
class PairStats:
    a: str
    b: str
    common: int
    agreement: float
    kappa: float


@dataclass(frozen=True)
class AgreementReport:
    annotators: list[AnnotatorStats]
    pairs: list[PairStats]
    alpha: float
    alpha_items: int


def agreement_report(
    labels: Sequence[tuple[int, str, float | None, Mapping]],
    returns: Mapping[int, tuple[float, float]],
) -> AgreementReport:
    """Statistics over ``labels`` = (query id, labeller, value or None for a skip, metadata);
    ``returns`` gives the true returns of the queries that have them (for the oracle)."""
    oracle = oracle_labels(returns)
    by_labeler: dict[str, dict[int, float | None]] = defaultdict(dict)
    metas: dict[str, list[Mapping]] = defaultdict(list)
    for q, who, value, meta in labels:
        by_labeler[who][q] = value
        metas[who].append((value, meta))
    stats = []
    for who in sorted(by_labeler):
        given = by_labeler[who]
        kept = {q: v for q, v in given.items() if v is not None}
        strict = [(v, m) for v, m in metas[who] if v in (0.0, 1.0) and m.get("left") in (1, 2)]
        # label 1 with candidate 1 on the left, or label 0 with candidate 2 on the left
        lefts = sum(1 for v, m in strict if (v == 1.0) == (m["left"] == 1))
        latencies = [
            float(m["latency_ms"])
            for _v, m in metas[who]
            if isinstance(m.get("latency_ms"), int | float)
        ]
        with_oracle = [q for q in kept if q in oracle]
        human = [kept[q] for q in with_oracle]
        truth = [oracle[q] for q in with_oracle]
        stats.append(
            AnnotatorStats(
                labeler=who,
                labelled=len(given),
                first=sum(v == 1.0 for v in kept.values()),
                second=sum(v == 0.0 for v in kept.values()),
                ties=sum(v == 0.5 for v in kept.values()),
                skipped=len(given) - len(kept),
                left_share=lefts / len(strict) if strict else math.nan,
                median_latency_ms=float(np.median(latencies)) if latencies else math.nan,
                oracle_n=len(with_oracle),
                oracle_agreement=(
                    sum(h == t for h, t in zip(human, truth)) / len(human) if human else math.nan
                ),
                oracle_kappa=cohen_kappa(human, truth),
            )
        )
    pairs = []
    for a, b in itertools.combinations(sorted(by_labeler), 2):
        ka = {q: v for q, v in by_labeler[a].items() if v is not None}
        kb = {q: v for q, v in by_labeler[b].items() if v is not None}
        common = sorted(ka.keys() & kb.keys())
        la, lb = [ka[q] for q in common], [kb[q] for q in common]
        pairs.append(
            PairStats(
                a,
                b,
                len(common),
                sum(x == y for x, y in zip(la, lb)) / len(common) if common else math.nan,
                cohen_kappa(la, lb),
            )
        )
    units: dict[int, list[float]] = defaultdict(list)
    for given in by_labeler.values():
        for q, v in given.items():
            if v is not None:
                units[q].append(v)
    multi = [vs for vs in units.values() if len(vs) >= 2]
    return AgreementReport(stats, pairs, krippendorff_alpha(multi), len(multi))
