"""Start one engine in a fresh process, run fixed prompts, print the recorded stats as JSON.

Used by tests that need a process of their own (compile cache, environment switches).
"""

import json
import os
import random
import sys

if __name__ == "__main__":
    model, out = sys.argv[1], sys.argv[2]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    import vllm_maxact

    llm = LLM(model, max_model_len=512, enable_prefix_caching=False, dtype="bfloat16")
    rng = random.Random(0)
    toks = [[rng.randrange(3, 49000) for _ in range(n)] for n in (7, 90, 200)]
    llm.generate([{"prompt_token_ids": t} for t in toks], SamplingParams(max_tokens=1), use_tqdm=False)
    try:
        table = vllm_maxact.read_stats(llm)
        result = {"recording": True, "sites": {r["site"]: r["absmax"] for r in table.to_pylist()},
                  "tokens": table["tokens"][0].as_py()}
    except RuntimeError as e:
        result = {"recording": False, "error": str(e)}
    with open(out, "w") as f:
        json.dump(result, f)
