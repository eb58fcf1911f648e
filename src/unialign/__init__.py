"""unialign: align policies (language models and control agents) to preference feedback.

One bilevel formulation (PARL) covers reward learning + RL, direct alignment, Nash/self-play
methods, preference-based RL and bilevel reward design. See ``docs/`` for one page per method.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unialign")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
