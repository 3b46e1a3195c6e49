"""Functions that the GPU benchmarks (`gpu_invisible.py` through `tests/scripts/served_outputs.py`,
`gpu_replay.py`) run inside vLLM's workers (`LLM.apply_model`).

They live in their own module so that they are pickled by reference: a spawned worker imports
this file (the benchmark's folder is on the spawned processes' sys.path) instead of receiving a
copy of a `__main__` function, which breaks when an executor re-pickles it for its workers.
"""

from __future__ import annotations

import math

SEED = 1234
WEIGHT_STD = 0.02
# (layer, residual channel, scale of that down_proj row): massive activations that the residual
# stream carries from that layer on, as in trained models (the study's global maxima).
MASSIVE = ((1, 1234, 60.0), (2, 77, 120.0), (9, 3000, 250.0))
# A token whose embedding is ~5000x larger than any other: never drawn for prompts (ids start at
# 1000), it is placed where vLLM's CUDA-graph padding rows will later read it (a padding
# phase's check).
HOT_TOKEN = 500
HOT_SCALE = 5000.0


def randomize_weights(model) -> dict:
    """normal(0, 0.02) for every matrix, 1 for norms, a few massive down_proj rows."""
    import torch

    n = 0
    with torch.no_grad():
        dev = next(model.parameters()).device
        g = torch.Generator(device=dev)
        g.manual_seed(SEED)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.data.fill_(1.0)
            elif p.dim() == 2:
                p.data.normal_(0.0, WEIGHT_STD, generator=g)
            n += 1
        emb = getattr(model.model.embed_tokens, "weight", None)
        if emb is not None and emb.dim() == 2 and HOT_TOKEN < emb.shape[0]:
            emb.data[HOT_TOKEN] *= HOT_SCALE
        layers = model.model.layers
        hidden = model.config.hidden_size
        for li, ch, scale in MASSIVE:
            down = getattr(layers[li].mlp, "down_proj", None) if li < len(layers) else None  # MoE: experts
            w = getattr(down, "weight", None)
            if w is not None and w.dim() == 2:  # the CPU backend repacks linear weights away
                w.data[ch % hidden, :] *= scale
    return {"params": n}


def zero_lm_head(model) -> bool:
    """All logits 0: greedy decoding then emits token 0 in every engine, whatever the kernel
    rounding, so the graph and eager engines decode exactly the same inputs."""
    import torch

    with torch.no_grad():
        w = getattr(model.lm_head, "weight", None)
        if w is None:
            return False
        w.data.zero_()
    return True


def install_truth(model) -> int:
    """Independent reference: float64 max/min of the same extracted tensors, eager hooks."""
    import torch

    from vllm_maxact.adapters import find_adapter

    adapter = find_adapter(model)
    rec = getattr(adapter.decoder(model), "maxact_recorder", None)
    probes = list(adapter.probes(model))
    dev = next(model.parameters()).device
    truth = {
        "names": [p.site.name for p in probes],
        "max": torch.full((len(probes),), -math.inf, dtype=torch.float64, device=dev),
        "min": torch.full((len(probes),), math.inf, dtype=torch.float64, device=dev),
        "tokens": [0],
        "row_mismatch": [0],
    }
    model._maxact_truth = truth

    def update(i: int, x: torch.Tensor, is_embedding: bool) -> None:
        x2 = x.reshape(-1, x.shape[-1])
        n = int(rec.n_valid.item()) if rec is not None else x2.shape[0]
        if n != x2.shape[0]:
            truth["row_mismatch"][0] += 1  # eager runs have no padding: must stay 0
        if n == 0:
            return
        xd = x2[:n].double()
        truth["max"][i] = torch.maximum(truth["max"][i], xd.max())
        truth["min"][i] = torch.minimum(truth["min"][i], xd.min())
        if is_embedding:
            truth["tokens"][0] += n

    for i, p in enumerate(probes):
        emb = p.site.kind.value == "embedding"
        if p.on == "output":
            p.module.register_forward_hook(lambda m, a, o, i=i, p=p, emb=emb: update(i, p.extract(o), emb))
        else:
            p.module.register_forward_pre_hook(
                lambda m, a, k, i=i, p=p, emb=emb: update(i, p.extract(a, k), emb), with_kwargs=True
            )
    return len(probes)


def read_truth(model) -> dict:
    t = model._maxact_truth
    return {
        "names": t["names"],
        "max": t["max"].cpu().tolist(),
        "min": t["min"].cpu().tolist(),
        "tokens": t["tokens"][0],
        "row_mismatch": t["row_mismatch"][0],
    }


def reset_truth(model) -> bool:
    t = model._maxact_truth
    t["max"].fill_(-math.inf)
    t["min"].fill_(math.inf)
    t["tokens"][0] = 0
    t["row_mismatch"][0] = 0
    return True


def has_recorder(model) -> bool:
    """Whether the plugin attached a recorder to this model (False when it is switched off)."""
    from vllm_maxact.adapters import find_adapter

    adapter = find_adapter(model)
    return adapter is not None and hasattr(adapter.decoder(model), "maxact_recorder")


_PROFILER = {}


def profile_start(model) -> bool:
    """Start torch's profiler (CPU + CUDA activity, kernels inside CUDA-graph replays included)
    in this worker; `profile_stop` ends it and summarises."""
    import torch

    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=acts)
    prof.start()
    _PROFILER["p"] = prof
    return True


def profile_stop(model) -> dict:
    """GPU kernel time (sum and union of intervals), the span from first kernel start to last
    kernel end, kernel count, the kernels by total time (top 40), and the CUDA runtime / driver
    calls by count (kernel launches, CUDA-graph replays), all in microseconds."""
    import torch

    prof = _PROFILER.pop("p")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    prof.stop()
    spans, by_name, api = [], {}, {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            if e.name.startswith(("cuda", "cu")):  # runtime / driver calls: launches, graph replays
                t, c = api.get(e.name, (0.0, 0))
                api[e.name] = (t + e.time_range.elapsed_us(), c + 1)
            continue
        a, b = e.time_range.start, e.time_range.end
        spans.append((a, b))
        t, c = by_name.get(e.name, (0.0, 0))
        by_name[e.name] = (t + (b - a), c + 1)
    spans.sort()
    busy, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:40]
    return {
        "kernels": len(spans),
        "kernel_us": sum(b - a for a, b in spans),
        "busy_us": busy,
        "span_us": (spans[-1][1] - spans[0][0]) if spans else 0.0,
        "top": [{"name": n[:160], "us": t, "count": c} for n, (t, c) in top],
        "api": [{"name": n, "us": t, "count": c} for n, (t, c) in sorted(api.items(), key=lambda kv: -kv[1][1])[:15]],
    }
