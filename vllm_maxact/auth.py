"""Who may change recorded state: the state-changing worker methods check a token.

`maxact_reset`, `maxact_collect(reset=True)` and `maxact_int8` run inside vLLM's workers, and
anything that can call a worker method can call them: `LLM.collective_rpc` in the process that
built the engine, and, with vLLM's dev mode on (``VLLM_SERVER_DEV_MODE=1``), anyone who reaches
the server's ``POST /collective_rpc``. So they run only for a caller that presents

- the instance's own secret: made at random by the instance's front end when it starts and
  handed to vLLM's child processes through the environment (readable only by the same user);
  the Python API (`reset_stats`, `read_stats(reset=True)`, replay) passes it; or
- ``VLLM_MAXACT_ADMIN_TOKEN``, when set: for callers outside the process, e.g. dev mode's
  ``{"method": "maxact_reset", "kwargs": {"token": "..."}}``.

Reading statistics changes nothing and needs no token.
"""

from __future__ import annotations

import hmac

from vllm_maxact.config import get_config
from vllm_maxact.export.runtime import instance_token


def authorized(token: object) -> bool:
    if not isinstance(token, str) or not token:
        return False
    good = [t for t in (instance_token(), get_config().admin_token) if t]
    # every candidate compared, in constant time: no early exit that would time the match
    return any([hmac.compare_digest(token.encode(), t.encode()) for t in good])


def require(token: object, what: str) -> None:
    if not authorized(token):
        raise PermissionError(
            f"vllm-maxact: {what} refused: it changes recorded state and needs a token. In the process "
            "that started the engine, use vllm_maxact.reset_stats(llm); from elsewhere, pass "
            "kwargs {\"token\": VLLM_MAXACT_ADMIN_TOKEN} (set on the server).")


def caller_token() -> str | None:
    """The token this process presents: the instance's own secret, else the admin token."""
    return instance_token() or get_config().admin_token
