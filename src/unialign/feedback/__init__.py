"""Where preferences come from and where they are kept, for any kind of policy.

Candidates (:mod:`~unialign.feedback.types`): control segments (:class:`SegmentBatch`) and
language-model completion pairs (:class:`CompletionPairs`). The SQLite store
(:mod:`~unialign.feedback.store`) keeps comparisons of either kind and labels from simulated
teachers, judges or humans; the B-Pref teachers (:mod:`~unialign.feedback.teachers`) label any
candidates with scalar returns; :mod:`~unialign.feedback.export` writes labelled completion
comparisons as preference JSONL for ``unialign train lm``.

This layer imports nothing from ``unialign.lm``, ``unialign.control`` or ``unialign.bilevel``
(``tests/feedback/test_layering.py`` checks it): the engines depend on it, not the reverse.
"""

from unialign.feedback.export import ExportReport, export_preference_jsonl
from unialign.feedback.store import FeedbackStore, FeedbackStoreError, StoreMark
from unialign.feedback.teachers import Teacher, TeacherConfig, TeacherOutput, mean_segment_return
from unialign.feedback.types import CompletionPairs, LabelledCompletions, SegmentBatch

__all__ = [
    "CompletionPairs",
    "ExportReport",
    "FeedbackStore",
    "FeedbackStoreError",
    "LabelledCompletions",
    "SegmentBatch",
    "StoreMark",
    "Teacher",
    "TeacherConfig",
    "TeacherOutput",
    "export_preference_jsonl",
    "mean_segment_return",
]
