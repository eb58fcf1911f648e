"""``unialign label``: add-annotator, list-annotators, and the serve command's checks."""

import socket
import subprocess
import sys
import time
import urllib.request

from unialign.cli import main
from unialign.label.annotators import Annotators

from .helpers import make_store


def test_add_and_list_annotators(tmp_path, capsys):
    store = make_store(tmp_path / "feedback.sqlite", lm=1, segments=0)
    assert main(["label", "add-annotator", str(tmp_path), "ada"]) == 0  # a run dir works
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert "shown once" in out and "human:ada" in out
    assert Annotators(store).login(token) is not None
    assert main(["label", "add-annotator", str(store), "ada"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["label", "add-annotator", str(store), "ada", "--reset"]) == 0
    assert Annotators(store).login(token) is None
    assert main(["label", "add-annotator", str(store), "bad name"]) == 2
    assert main(["label", "list-annotators", str(store)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ada"
    assert main(["label", "add-annotator", str(store)]) == 2
    assert main(["label", "add-annotator", str(tmp_path / "nodir" / "s.sqlite"), "x"]) == 2


def test_serve_refuses_missing_or_foreign_files(tmp_path, capsys):
    assert main(["label", str(tmp_path)]) == 2
    assert "no feedback store" in capsys.readouterr().err
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert main(["label", str(other)]) == 2
    assert "not a unialign feedback store" in capsys.readouterr().err
    assert main(["label", "a", "b"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_on_localhost(tmp_path):
    """The real command in a subprocess: it binds 127.0.0.1 and redirects to the login page."""
    store = make_store(tmp_path / "feedback.sqlite", lm=1, segments=0)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unialign.cli", "label", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as r:
                    assert r.status == 200 and "Log in" in r.read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.url.endswith("/login")  # followed the redirect: no session
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"labelling {store}" in out and "no annotators yet" in err
