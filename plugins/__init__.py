"""Family adapters shipped with vllm-maxact, installed as ``vllm_maxact.plugins``.

One small file per family; each is registered in pyproject.toml under the entry-point group
``vllm_maxact.adapters``.
"""
