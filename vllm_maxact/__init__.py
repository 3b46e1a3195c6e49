"""vllm-maxact: activation-range monitoring inside vLLM.

Public surface: `read_stats`, `reset_stats` (a running `vllm.LLM`), `Site`, `Kind`.
"""

__version__ = "0.1.0"

from vllm_maxact.sites import Kind, Site  # noqa: E402

__all__ = ["Kind", "Site", "__version__", "read_instance", "read_stats", "reset_stats", "snapshot"]


def __getattr__(name: str):
    # Lazy: `import vllm_maxact` happens inside every vLLM process via the plugin entry point
    # and must stay cheap.
    if name in ("read_stats", "reset_stats", "snapshot", "read_instance"):
        from vllm_maxact import api

        return getattr(api, name)
    raise AttributeError(name)
