"""The command line's own commands and the README's Python example."""

import re
from pathlib import Path

import pytest

from unialign import __version__
from unialign.cli import main
from unialign.losses import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_losses_lists_every_objective(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert len(REGISTRY) >= 25
    for name in REGISTRY:
        assert name in out, name
    assert "arXiv 2305.18290" in out  # DPO's paper


def test_losses_family_filter(capsys):
    assert main(["losses", "--family", "game"]) == 0
    out = capsys.readouterr().out
    assert "inpo" in out and "hinge" not in out


def test_readme_python_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["out"].losses.shape == (2,)


def test_readme_names_the_two_commands_ci_runs():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_bad_environment_is_a_clean_error(tmp_path, capsys):
    """A discrete-action env id: exit 2, a one-line reason, nothing written."""
    out = tmp_path / "run"
    assert main(["train", "control", "--env", "CartPole-v1", "--output-dir", str(out)]) == 2
    assert "continuous Box action space" in capsys.readouterr().err
    assert not out.exists()
