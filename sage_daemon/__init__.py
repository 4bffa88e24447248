"""SAGE daemon: one process serving LLMs, embeddings and dataflow jobs on a workstation."""
from sage_client._version import __version__

__all__ = ["__version__"]
