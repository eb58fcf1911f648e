"""``unialign label``: serve the labelling app, and manage its annotators.

    unialign label RUN_DIR_OR_STORE [--host 127.0.0.1] [--port 8000]
    unialign label add-annotator RUN_DIR_OR_STORE NAME [--reset]
    unialign label list-annotators RUN_DIR_OR_STORE

A run directory stands for its ``feedback.sqlite``. The parser is built here and attached to
the main command line by :func:`add_label_parser`; nothing heavy is imported until a command
runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

__all__ = ["STORE_NAME", "add_label_parser", "resolve_store", "run_label"]

STORE_NAME = "feedback.sqlite"
ACTIONS = ("add-annotator", "list-annotators")

USAGE = """unialign label [-h] [--host HOST] [--port PORT] [--hide-true-reward]
                      [--secure-cookies] [--session-hours H] RUN_DIR_OR_STORE
       unialign label add-annotator [--reset] RUN_DIR_OR_STORE NAME
       unialign label list-annotators RUN_DIR_OR_STORE"""


def add_label_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "label",
        help="the labelling web app: people compare pending queries of a feedback store",
        usage=USAGE,
        description="Serve the labelling web app for a feedback store (pages for each pending "
        "query, keyboard labelling, agreement and export), or create an annotator's login "
        "token. See docs/labelling.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "args",
        nargs="+",
        metavar="RUN_DIR_OR_STORE",
        help="a feedback store file or a run directory holding feedback.sqlite (after "
        "add-annotator: the store, then the annotator's NAME)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--hide-true-reward",
        action="store_true",
        help="leave the true reward out of segment plots (blind studies)",
    )
    p.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the session cookie Secure (when served over HTTPS, e.g. behind a TLS proxy)",
    )
    p.add_argument(
        "--session-hours", type=float, default=12.0, help="session lifetime (default: 12)"
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="add-annotator: issue a new token for an existing annotator (ends their sessions)",
    )
    p.set_defaults(func=run_label)
    return p


def resolve_store(target: str) -> Path:
    """A store file, or ``<dir>/feedback.sqlite`` for a directory."""
    path = Path(target)
    return path / STORE_NAME if path.is_dir() else path


def run_label(args: argparse.Namespace) -> int:
    words = list(args.args)
    if words[0] == "add-annotator":
        if len(words) != 3:
            return _usage("add-annotator takes RUN_DIR_OR_STORE and NAME")
        return _add_annotator(resolve_store(words[1]), words[2], reset=args.reset)
    if words[0] == "list-annotators":
        if len(words) != 2:
            return _usage("list-annotators takes RUN_DIR_OR_STORE")
        return _list_annotators(resolve_store(words[1]))
    if len(words) != 1:
        return _usage(f"serve takes one RUN_DIR_OR_STORE, got {len(words)} arguments")
    return _serve(resolve_store(words[0]), args)


def _usage(message: str) -> int:
    print(f"usage: {USAGE}\nunialign label: error: {message}", file=sys.stderr)
    return 2


def _add_annotator(store: Path, name: str, *, reset: bool) -> int:
    from unialign.label.annotators import AnnotatorError, Annotators

    if not store.parent.is_dir():
        print(f"unialign: error: no directory {store.parent}", file=sys.stderr)
        return 2
    try:
        annotators = Annotators(store)
        token = annotators.add(name, reset=reset)
    except AnnotatorError as e:
        print(f"unialign: error: {e}", file=sys.stderr)
        return 2
    name = name.removeprefix("human:")
    print(f"annotator {name!r} ({'new token' if reset else 'created'}), labels as human:{name}")
    print(f"login token (shown once; only its hash is kept in {annotators.path}):")
    print(token)
    if not store.exists():
        print(f"note: {store} does not exist yet; serve it once the run has created it")
    return 0


def _list_annotators(store: Path) -> int:
    from unialign.label.annotators import Annotators, sidecar_path

    if not sidecar_path(store).exists():
        print(f"no annotators for {store} (none added yet)")
        return 0
    for name in Annotators(store).names():
        print(name)
    return 0


def _serve(store: Path, args: argparse.Namespace) -> int:
    from unialign.feedback.store import FeedbackStoreError

    if not store.exists():
        print(
            f"unialign: error: no feedback store at {store}; give a store file or a run "
            f"directory with {STORE_NAME} (a run creates it when it posts its first query)",
            file=sys.stderr,
        )
        return 2
    try:
        import uvicorn

        from unialign.label.annotators import Annotators
        from unialign.label.app import create_app
    except ImportError as e:  # pragma: no cover - a partial install
        print(
            f"unialign: error: the labelling app needs fastapi and uvicorn ({e})", file=sys.stderr
        )
        return 2
    try:
        app = create_app(
            store,
            show_reward=not args.hide_true_reward,
            secure_cookies=args.secure_cookies,
            session_ttl_s=args.session_hours * 3600,
        )
    except FeedbackStoreError as e:
        print(f"unialign: error: {e}", file=sys.stderr)
        return 2
    if not Annotators(store).names():
        print(
            f"unialign: warning: no annotators yet; add one with "
            f"`unialign label add-annotator {store} NAME`",
            file=sys.stderr,
        )
    if not _is_loopback(args.host):
        print(
            f"unialign: warning: serving on {args.host}, not only this machine: the app speaks "
            "plain HTTP, so put it behind an HTTPS proxy and pass --secure-cookies",
            file=sys.stderr,
        )
    print(f"unialign: labelling {store} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
