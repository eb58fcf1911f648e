"""The labelling web app: people compare pairs from a feedback store (``docs/labelling.md``).

``unialign label RUN_DIR_OR_STORE`` serves it; ``unialign label add-annotator STORE NAME``
creates a login. Modules: ``annotators`` (tokens, sessions, display order), ``queries`` (store
reads, the label write and undo), ``render`` (safe markdown), ``media`` (segment pictures),
``agreement`` (κ, α, oracle agreement), ``app`` (routes), ``cli`` (the commands).
"""

from unialign.label.annotators import Annotators, sidecar_path

__all__ = ["Annotators", "create_app", "sidecar_path"]


def create_app(*args, **kwargs):
    """:func:`unialign.label.app.create_app` (imported on first use: FastAPI is only needed
    to serve)."""
    from unialign.label.app import create_app as _create_app

    return _create_app(*args, **kwargs)
