"""modernbert-cli: sentence similarity from the command line with ModernBERT embeddings.

The package is importable without torch: heavy libraries are imported inside the
functions that need them, so ``--help`` and input errors answer at once.
"""

__version__ = "1.0.0"

from modernbert_cli.embedder import Embedder  # light: imports no torch
from modernbert_cli.settings import Settings

__all__ = ["Embedder", "Settings", "__version__"]
