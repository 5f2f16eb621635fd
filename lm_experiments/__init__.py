"""lm-experiments: honest, reproducible perplexity comparisons of language-model architectures."""

from lm_experiments import console as _console
from lm_experiments import utils as _utils  # noqa: F401  registers the config resolvers

_console.quiet()

__version__ = "0.1.0"
