"""`vllm serve --api-server-count 2`: vLLM switches /metrics to a multiprocess registry per API
server process; every server must still serve our series, with the same values."""

from __future__ import annotations

import re
import time

import pytest
import requests
from servers import VllmServer

pytestmark = pytest.mark.slow


def test_every_api_server_serves_our_metrics(tiny_factory, tmp_path):
    model = tiny_factory("llama")
    srv = VllmServer(model, tmp_path, name="tiny", extra_args=("--api-server-count", "2"),
                     env={"VLLM_MAXACT_PUBLISH_INTERVAL_S": "0.5"})
    try:
        for i in range(6):
            r = requests.post(srv.url + "/v1/completions", timeout=120,
                              json={"model": "tiny", "prompt": f"request {i} " * 20, "max_tokens": 4})
            assert r.status_code == 200, r.text
        time.sleep(3)
        values = set()
        for _ in range(8):  # connections are spread over both API server processes
            text = requests.get(srv.url + "/metrics", timeout=10).text
            m = re.search(r'^vllm_maxact_absmax\{kind="residual",layer="3",model_name="tiny"\} (\S+)$', text, re.M)
            assert m, "an API server's /metrics lacks vllm_maxact series"
            values.add(m.group(1))
        assert len(values) == 1
    finally:
        srv.kill()
