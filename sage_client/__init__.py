"""SAGE thin client: wire protocol, RPC client, sagectl and UnifiedInferenceClient. Never imports sage_daemon."""
from sage_client._version import __version__

__all__ = ["__version__"]
