"""Two engines in one process: the first with the plugin on, the second with
``VLLM_MAXACT_ENABLE=0`` set before it is built. Writes what each recorded and how reads of the
second failed. vLLM's engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so
nothing but the switch tells the two apart.

    python tests/scripts/switch_probe.py MODEL OUT.json
"""

import json
import os
import sys

if __name__ == "__main__":
    model, out = sys.argv[1], sys.argv[2]
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_MAXACT_ENABLE"] = "1"
    from vllm import LLM, SamplingParams

    import vllm_maxact

    kw = dict(max_model_len=512, max_num_batched_tokens=512, enable_prefix_caching=False, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(100, 100 + n))} for n in (7, 60)]
    result = {}
    for name, enable in (("on", "1"), ("off", "0")):
        os.environ["VLLM_MAXACT_ENABLE"] = enable
        llm = LLM(model, **kw)
        llm.generate(prompts, SamplingParams(max_tokens=2), use_tqdm=False)
        entry = {}
        try:
            table = vllm_maxact.read_stats(llm)
            entry["tokens"] = table["tokens"][0].as_py()
        except RuntimeError as e:
            entry["read_error"] = str(e)
        try:
            vllm_maxact.reset_stats(llm)
            entry["reset"] = "ok"
        except RuntimeError as e:
            entry["reset_error"] = str(e)
        result[name] = entry
        llm.llm_engine.engine_core.shutdown()
        del llm
    with open(out, "w") as f:
        json.dump(result, f)
