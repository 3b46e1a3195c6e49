"""One vLLM engine in a fresh process: serve fixed prompts and write every number it served.

Greedy decoding with ``prompt_logprobs=1`` and ``logprobs=1``: per prompt, the prompt tokens'
logprobs (token id and logprob of every entry vLLM returns), the sampled tokens and their
logprobs. The prompts run ``--repeat`` times in one batch (the first run after start-up and
later ones), then ``--solo`` of them alone (outputs that depend on what else is in the batch).
Optionally times workloads (``--timing``) in the same engine. Floats are written with
``repr`` (exact), so two files compare bit for bit.

Used by tests/test_invisible.py (CPU build) and benchmarks/gpu_invisible.py (GPU): the plugin
on or off is this process's environment (``VLLM_MAXACT_ENABLE``), one engine per process.

    python tests/scripts/served_outputs.py --model DIR --out out.json [--prompts 12] ...
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import statistics
import time

#: name, batch, prompt tokens, output tokens, which tokens/s is the figure (GPU benchmark)
WORKLOADS = {
    "decode_b1": (1, 128, 256, "output"),
    "decode_b64": (64, 256, 256, "output"),
    "decode_b256": (256, 512, 128, "output"),
    "prefill_b64x2048": (64, 2048, 1, "prompt"),
    # small ones for a CPU dry run
    "decode_b4": (4, 32, 16, "output"),
    "prefill_b4x256": (4, 256, 1, "prompt"),
}


def prompts_from_args(args) -> list[dict]:
    if args.texts:
        with open(args.texts) as f:
            return [{"prompt": t} for t in json.load(f)][: args.prompts]
    rng = random.Random(args.seed)
    lo, hi = args.token_range
    lengths = [rng.randint(args.min_len, args.max_len) for _ in range(args.prompts)]
    return [{"prompt_token_ids": [rng.randrange(lo, hi) for _ in range(n)]} for n in lengths]


def served(outputs) -> list[dict]:
    """Every number vLLM served for each request, exactly."""
    out = []
    for o in outputs:
        plp = []
        for pos in o.prompt_logprobs or []:
            plp.append(None if pos is None else sorted((int(t), repr(float(lp.logprob))) for t, lp in pos.items()))
        c = o.outputs[0]
        slp = []
        for pos in c.logprobs or []:
            slp.append(sorted((int(t), repr(float(lp.logprob))) for t, lp in pos.items()))
        out.append({"prompt_logprobs": plp, "tokens": list(c.token_ids), "logprobs": slp})
    return out


def compare(a: list[dict], b: list[dict]) -> dict:
    """Two runs of the same prompts (`served` lists): how many prompt logprobs and sampled
    logprobs are bitwise equal, the largest difference, how many continuations are identical."""
    n_plp = eq_plp = n_slp = eq_slp = same_tokens = 0
    max_diff = 0.0
    for x, y in zip(a, b, strict=True):
        for px, py in zip(x["prompt_logprobs"], y["prompt_logprobs"], strict=True):
            if px is None:
                continue
            n_plp += 1
            eq_plp += px == py
            if px != py:
                dx, dy = dict(px), dict(py)
                for t in dx.keys() & dy.keys():
                    max_diff = max(max_diff, abs(float(dx[t]) - float(dy[t])))
        same_tokens += x["tokens"] == y["tokens"]
        for sx, sy in zip(x["logprobs"], y["logprobs"], strict=False):
            n_slp += 1
            eq_slp += sx == sy
    return {"prompt_logprobs": n_plp, "prompt_logprobs_equal": eq_plp, "max_abs_diff": max_diff,
            "sampled_logprobs": n_slp, "sampled_logprobs_equal": eq_slp,
            "continuations": len(a), "continuations_identical": same_tokens,
            "bitwise": eq_plp == n_plp and eq_slp == n_slp and same_tokens == len(a)}


def timing(llm, names: list[str], reps: int, seed: int) -> dict:
    from vllm import SamplingParams

    rng = random.Random(seed)
    res = {}
    for name in names:
        batch, p_len, o_len, kind = WORKLOADS[name]
        prompts = [{"prompt_token_ids": [rng.randrange(1000, 30000) for _ in range(p_len)]} for _ in range(batch)]
        sp = SamplingParams(temperature=0.0, max_tokens=o_len, ignore_eos=True)
        llm.generate(prompts, sp, use_tqdm=False)  # warm-up of this shape
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            dt = time.perf_counter() - t0
            rates.append((batch * (o_len if kind == "output" else p_len)) / dt)
        res[name] = {"rates": rates, "median": statistics.median(rates), "kind": kind}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--texts", help="JSON list of prompt strings (default: random token ids)")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--min-len", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--token-range", type=int, nargs=2, default=(1000, 30000))
    ap.add_argument("--out-tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--solo", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--eager", action="store_true", help="enforce_eager=True")
    ap.add_argument("--dummy", action="store_true", help="load_format='dummy', no tokenizer")
    ap.add_argument("--init", help="MODULE:FUNC applied to the model in the workers (LLM.apply_model) after load")
    ap.add_argument("--gpu-mem", type=float, default=None)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--timing", default="", help="comma-separated workloads to time (WORKLOADS)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stats", action="store_true", help="also read the recorded statistics")
    ap.add_argument("--inproc", action="store_true",
                    help="engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): every prompt is "
                         "queued before the first step, so batch composition does not depend on timing")
    args = ap.parse_args()
    if args.inproc:
        # The offline client hands prompts one by one to an engine-core process that is already
        # stepping: under load its first steps hold fewer of them, and on the CPU build the batch
        # shape changes the arithmetic (plain vLLM alone then differs from run to run).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    from vllm import LLM, SamplingParams

    kw = dict(max_model_len=args.max_model_len, dtype=args.dtype, enforce_eager=args.eager, seed=args.seed)
    if args.dummy:
        kw.update(load_format="dummy", skip_tokenizer_init=True)
    if args.gpu_mem:
        kw["gpu_memory_utilization"] = args.gpu_mem
    if args.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = args.max_num_batched_tokens
    t0 = time.perf_counter()
    llm = LLM(args.model, **kw)
    start_s = time.perf_counter() - t0
    result: dict = {"start_s": start_s, "plugin": os.environ.get("VLLM_MAXACT_ENABLE", "1"),
                    "runner_env": os.environ.get("VLLM_USE_V2_MODEL_RUNNER"), "eager": args.eager}
    if args.init:
        mod, fn = args.init.split(":")
        result["init"] = llm.apply_model(getattr(importlib.import_module(mod), fn))
    prompts = prompts_from_args(args)
    sp = SamplingParams(temperature=0.0, max_tokens=args.out_tokens, prompt_logprobs=1, logprobs=1,
                        ignore_eos=True)
    result["runs"] = [served(llm.generate(prompts, sp, use_tqdm=False)) for _ in range(args.repeat)]
    result["solo"] = [served(llm.generate([p], sp, use_tqdm=False))[0] for p in prompts[: args.solo]]
    if args.stats:
        import vllm_maxact

        try:
            table = vllm_maxact.read_stats(llm)
            result["stats"] = {r["site"]: [r["max"], r["min"], r["tokens"]] for r in table.to_pylist()}
        except RuntimeError as e:
            result["stats"] = {"error": str(e)}
    if args.timing:
        result["timing"] = timing(llm, [w for w in args.timing.split(",") if w], args.reps, args.seed + 1)
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"served_outputs: wrote {args.out} (start {start_s:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
