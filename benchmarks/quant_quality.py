"""From measured ranges to served low-bit models: quality, measured in vLLM.

For one model (bundled alias or folder), on the built-in corpus split four ways by sample index
(i % 4 == 0: calibration, i % 4 == 2: held out):

1. replay the calibration split with every linear input and the KV cache recorded, and the
   INT-8 check (calibrate on its first half, evaluate on the second): ``calib.arrow``;
2. smoothing (`scales --format smoothquant`, `smooth`) and a replay of the smoothed checkpoint;
3. checkpoints with ``vllm-maxact quantize``: W8A8 static ``max``, static ``p999``, smoothed +
   static ``max``, dynamic per-token; and, where llm-compressor runs, its own static
   calibration on the same calibration samples (``--llmc-python``: an interpreter that has it);
4. perplexity of the held-out split served by vLLM (prompt logprobs), each engine in a fresh
   process: the unquantized model, every checkpoint, and FP8 KV cache with our scales vs with
   none (scale 1);
5. per site, the INT-8 check's SQNR against the loss its static quantization alone causes (only
   that site's linear input fake-quantized with the ``max`` threshold, in transformers, float32,
   every site), and their rank correlation;
6. the same served by vLLM (``--served-sites N``: N sites spread evenly over the SQNR ranking,
   each a checkpoint with ``quantize --only-sites SITE`` served in its own engine, perplexity of
   the first ``--served-site-samples`` held-out samples against the unquantized model's).

    python benchmarks/quant_quality.py --model smollm2-135m --work /tmp/qq  # writes results JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = "default,attn_in,o_in,mlp_in,down_in,k,v"
LINEAR_KINDS = ("attn_in", "o_in", "mlp_in", "down_in")


def cli(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "vllm_maxact.cli", *args]
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}; see {log}")
    print(f"  {args[0]} done in {time.time() - t0:.0f} s", flush=True)


def split(work: Path) -> tuple[Path, Path]:
    from vllm_maxact.corpus import load_corpus

    samples = list(load_corpus("builtin"))
    out = []
    for name, r in (("calib", 0), ("heldout", 2)):
        p = work / f"{name}.jsonl"
        with open(p, "w") as f:
            for i, s in enumerate(samples):
                if i % 4 == r:
                    f.write(json.dumps({"text": s.text, "domain": s.domain}) + "\n")
        out.append(p)
    return out[0], out[1]


def token_lists(model_dir: str, path: Path, n: int, max_tokens: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [json.loads(line)["text"] for line in open(path)][:n]
    return [tok(t).input_ids[:max_tokens] for t in texts]


# ------------------------------------------------------------------ served perplexity (child)

def ppl_child(args) -> None:
    from vllm import LLM, SamplingParams

    toks = json.loads(Path(args.tokens).read_text())
    # Eager: quality, not speed, is measured here, and a compiled engine starts in minutes on a
    # loaded 2-core machine (every configuration gets its own engine).
    kw = dict(max_model_len=args.max_tokens + 8, max_num_batched_tokens=2048, enable_prefix_caching=False,
              dtype=args.dtype, enforce_eager=True)
    if args.kv_cache_dtype:
        kw["kv_cache_dtype"] = args.kv_cache_dtype
    t0 = time.time()
    llm = LLM(args.ppl, **kw)
    start = time.time() - t0
    outs = llm.generate([{"prompt_token_ids": t} for t in toks],
                        SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
    nll, n = 0.0, 0
    for t, o in zip(toks, outs, strict=True):
        for pos in range(1, len(t)):
            nll -= o.prompt_logprobs[pos][t[pos]].logprob
            n += 1
    text = llm.generate(["The capital of France is"], SamplingParams(max_tokens=12, temperature=0.0),
                        use_tqdm=False)[0].outputs[0].text
    Path(args.out).write_text(json.dumps({"nll": nll, "tokens": n, "ppl": math.exp(nll / n), "start_s": start,
                                          "sample": text}))


def served_ppl(model_dir: str | Path, tokens: Path, out: Path, log: Path, *, dtype: str, max_tokens: int,
               kv_cache_dtype: str | None = None) -> dict:
    if out.exists():
        return json.loads(out.read_text())
    cmd = [sys.executable, __file__, "--ppl", str(model_dir), "--tokens", str(tokens), "--out", str(out),
           "--dtype", dtype, "--max-tokens", str(max_tokens)]
    if kv_cache_dtype:
        cmd += ["--kv-cache-dtype", kv_cache_dtype]
    env = {**os.environ, "VLLM_MAXACT_ENABLE": "0"}
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode:
        return {"error": f"exit {r.returncode}; see {log}"}
    res = json.loads(out.read_text())
    print(f"  ppl {model_dir}: {res['ppl']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return res


# ------------------------------------------------------------------ per-site loss (transformers)

def replay_rows(arrow: Path) -> dict[str, dict]:
    """Site -> its whole-corpus, rank-merged row of a replay's Arrow file."""
    from vllm_maxact.report import load, select_view

    return {r["site"]: r for r in select_view(load(arrow), "replay").to_pylist()}


def site_losses(model_dir: str, arrow: Path, toks: list[list[int]]) -> dict[str, dict]:
    """Per linear-input site: mean NLL increase when only that site's input is fake-quantized to
    INT-8 per tensor with its calibration max threshold (scale = threshold / 127), float32."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = replay_rows(arrow)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    names = {"attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o_in": ("self_attn.o_proj",),
             "mlp_in": ("mlp.gate_proj", "mlp.up_proj"), "down_in": ("mlp.down_proj",)}
    ids = [torch.tensor([t]) for t in toks]

    @torch.inference_mode()
    def nll() -> float:
        tot, n = 0.0, 0
        for x in ids:
            logits = model(input_ids=x).logits[0, :-1].float()
            tot += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            n += x.shape[1] - 1
        return tot / n

    base = nll()
    out = {}
    for i, layer in enumerate(model.model.layers):
        for kind, rels in names.items():
            site = f"layers.{i}.{kind}"
            thr = rows[site]["int8_threshold"] or rows[site]["absmax"]
            s = thr / 127.0

            def fq(_m, args, s=s):
                x = args[0]
                return (torch.clamp(torch.round(x / s), -127, 127) * s,)

            hs = [layer.get_submodule(r).register_forward_pre_hook(fq) for r in rels]
            loss = nll()
            for h in hs:
                h.remove()
            out[site] = {"delta_nll": loss - base, "sqnr_db": rows[site]["int8_sqnr_db"], "absmax": rows[site]["absmax"],
                         "p999_sqnr_db": rows[site].get("int8_p999_sqnr_db")}
    return {"base_nll": base, "sites": out}


def spearman(a: list[float], b: list[float]) -> float:
    import numpy as np

    def ranks(v):
        v = np.asarray(v, float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        # average ties
        for x in np.unique(v):
            m = v == x
            r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------ llm-compressor (peer)

LLMC_SCRIPT = r'''
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from compressed_tensors.quantization import QuantizationScheme, QuantizationArgs
src, toks_path, out = sys.argv[1:4]
toks = json.load(open(toks_path))
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
tok = AutoTokenizer.from_pretrained(src)
ds = Dataset.from_dict({"input_ids": toks, "attention_mask": [[1] * len(t) for t in toks]})
scheme = QuantizationScheme(targets=["Linear"],
    weights=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel"),
    input_activations=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="tensor", dynamic=False))
recipe = QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"],
    kv_cache_scheme=QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="tensor", dynamic=False))
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(toks), max_seq_length=max(map(len, toks)))
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
'''


def llmc(python: str, src: str, toks: Path, out: Path, log: Path) -> bool:
    if (out / "config.json").exists():
        return True
    script = out.parent / "llmc_oneshot.py"
    script.write_text(LLMC_SCRIPT)
    t0 = time.time()
    with open(log, "a") as f:
        r = subprocess.run([python, str(script), src, str(toks), str(out)], stdout=f, stderr=subprocess.STDOUT)
    print(f"  llm-compressor oneshot: exit {r.returncode} ({time.time() - t0:.0f} s)", flush=True)
    return r.returncode == 0


def with_zero_point(src: Path, out: Path) -> None:
    """A copy of a static symmetric W8A8 checkpoint (llm-compressor's) whose activation scales are
    described as asymmetric with zero point 0: the same numbers, but the kernel vLLM's CPU build
    takes for them reads the static scales (on AMX the symmetric one does not)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    if out.exists():
        return
    tmp = out.with_name(out.name + ".tmp")
    shutil.copytree(src, tmp)
    for f in tmp.glob("*.safetensors"):
        t = load_file(str(f))
        for k in [k for k in t if k.endswith(".input_scale")]:
            t[k[: -len("input_scale")] + "input_zero_point"] = torch.zeros(1, dtype=torch.int8)
        save_file(t, str(f), metadata={"format": "pt"})
    cfg = json.loads((tmp / "config.json").read_text())
    for g in cfg["quantization_config"]["config_groups"].values():
        g["input_activations"]["symmetric"] = False
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(out)


def input_scales(folder: Path) -> dict[str, float]:
    """Checkpoint tensor name -> value for every ``*.input_scale`` / ``*.k_scale`` / ``*.v_scale``."""
    from safetensors import safe_open

    out = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                if k.endswith((".input_scale", ".k_scale", ".v_scale")):
                    out[k] = float(h.get_tensor(k).float().reshape(-1)[0])
    return out


# ------------------------------------------------------------------ orchestration

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--calib-samples", type=int, default=64, help="calibration split samples replayed (INT-8 "
                    "check: first half calibrates, second half evaluates)")
    ap.add_argument("--heldout-samples", type=int, default=32)
    ap.add_argument("--site-samples", type=int, default=4, help="held-out samples for the per-site losses")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--llmc-python", default=None, help="a Python with llm-compressor installed (the peer)")
    ap.add_argument("--input-zero-point", choices=["auto", "yes", "no"], default="auto",
                    help="auto: yes on CPUs with AMX (vLLM 0.32's CPU int8 kernel ignores static symmetric scales there)")
    ap.add_argument("--skip-sites", action="store_true")
    ap.add_argument("--served-sites", type=int, default=0, help="only step 6: this many sites, each quantized "
                    "alone and served (needs a finished steps 1-3), into served-sites.json")
    ap.add_argument("--served-site-samples", type=int, default=8)
    ap.add_argument("--sites-only", action="store_true", help="only step 5 (per-site losses; no engine: it may run "
                    "next to the engines of another invocation), into sites.json")
    # child mode
    ap.add_argument("--ppl", default=None)
    ap.add_argument("--tokens", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--kv-cache-dtype", default=None)
    args = ap.parse_args()
    if args.ppl:
        ppl_child(args)
        return

    from vllm_maxact.models import resolve_model

    src = resolve_model(args.model, progress=False)
    work = args.work or Path(f"/tmp/quant-quality-{Path(src).name}")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    calib, heldout = split(work)
    n_cal = args.calib_samples
    res_path = work / "results.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    res.update({"model": args.model, "dtype": args.dtype, "max_tokens": args.max_tokens, "calib_samples": n_cal,
                "heldout_samples": args.heldout_samples})

    def save():
        res_path.write_text(json.dumps(res, indent=1))

    if args.served_sites:
        return _served_sites(args, src, work, heldout, log)
    if args.sites_only:
        held = work / "heldout_tokens.json"
        if not held.exists():
            held.write_text(json.dumps(token_lists(src, heldout, args.heldout_samples, args.max_tokens)))
        arrow = work / "calib.arrow"
        return _sites(args, src, work, held, arrow, {}, work / "sites.json")
    common = ["--corpus", str(calib), "--samples", str(n_cal), "--max-tokens", str(args.max_tokens), "--int8-check",
              "--calib-samples", str(n_cal // 2), "--eval-samples", str(n_cal - n_cal // 2), "--kinds", KINDS,
              "--quiet", "--dtype", args.dtype, "--engine-arg", "max_num_batched_tokens=2048"]
    # The calibration samples, written out (replay's own --samples N --seed 0 picks the same), so
    # that llm-compressor calibrates on exactly them.
    from vllm_maxact.corpus import load_corpus

    cal_file = work / f"calib{n_cal}.jsonl"
    cal_file.write_text("".join(json.dumps({"text": s.text, "domain": s.domain}) + "\n"
                                for s in load_corpus(str(calib), samples=n_cal, seed=0)))
    common[1] = str(cal_file)
    del common[2:4]
    arrow = work / "calib.arrow"
    print("[1] replay", flush=True)
    if not arrow.exists():
        cli("replay", "--model", src, "--out", str(arrow), *common, log=log)
    print("[2] smooth", flush=True)
    smoothed, arrow_s = work / "smoothed", work / "calib-smoothed.arrow"
    if not smoothed.exists():
        cli("scales", str(arrow), "--format", "smoothquant", "--model", src, "--alpha", "0.5",
            "--out", str(work / "smooth.json"), log=log)
        cli("smooth", src, str(work / "smooth.json"), "--out", str(smoothed), log=log)
    if not arrow_s.exists():
        # max thresholds only (the INT-8 check's histograms make a replay several times slower)
        plain = [a for a in common if a not in ("--int8-check",)]
        for flag in ("--calib-samples", "--eval-samples"):
            i = plain.index(flag)
            del plain[i:i + 2]
        cli("replay", "--model", str(smoothed), "--out", str(arrow_s), *plain, "--engine-arg", "enforce_eager=True",
            log=log)

    import torch

    zp = args.input_zero_point == "yes" or (args.input_zero_point == "auto" and torch.cpu._is_amx_tile_supported())
    res["input_zero_point"] = zp
    print(f"[3] quantize (input zero point {zp})", flush=True)
    ckpts = {
        "w8a8-static-max": (src, arrow, ["--threshold", "max"]),
        "w8a8-static-p999": (src, arrow, ["--threshold", "p999"]),
        "w8a8-smooth-static-max": (str(smoothed), arrow_s, ["--threshold", "max"]),
        "w8a8-dynamic": (src, arrow, ["--dynamic"]),
        # mixed precision from the INT-8 check's verdict: sites below 15 dB SQNR stay unquantized
        "w8a8-static-max-keep-sqnr15": (src, arrow, ["--threshold", "max", "--keep-below-sqnr", "15"]),
        "w8a8-static-max-keep-down": (src, arrow, ["--threshold", "max", "--keep-sites", "layers.*.down_in"]),
    }
    if zp:
        ckpts["w8a8-static-max-symmetric"] = (src, arrow, ["--threshold", "max"])
    for name, (m, a, extra) in ckpts.items():
        out = work / name
        if not out.exists():
            z = ["--input-zero-point"] if zp and not name.endswith("-symmetric") and "--dynamic" not in extra else []
            cli("quantize", m, str(a), "--out", str(out), *extra, *z, log=log)

    held = work / "heldout_tokens.json"
    held.write_text(json.dumps(token_lists(src, heldout, args.heldout_samples, args.max_tokens)))
    cal_toks = work / "calib_tokens.json"
    cal_toks.write_text(json.dumps(token_lists(src, cal_file, n_cal // 2, args.max_tokens)))

    if args.llmc_python:
        print("[3b] llm-compressor", flush=True)
        peer = work / "llmc-w8a8-static"
        if llmc(args.llmc_python, src, cal_toks, peer, log):
            ckpts["llmc-w8a8-static"] = (src, None, [])
            if zp:
                with_zero_point(peer, work / "llmc-w8a8-static-zp")
                ckpts["llmc-w8a8-static-zp"] = (src, None, [])
            ours, theirs = input_scales(work / "w8a8-static-max"), input_scales(peer)
            common_keys = sorted(set(ours) & set(theirs))
            res["peer_scales"] = {k: {"ours": ours[k], "llmc": theirs[k]} for k in common_keys}
            res["peer_missing"] = sorted(set(ours) ^ set(theirs))[:20]

    print("[4] served perplexity", flush=True)
    ppl = res.setdefault("ppl", {})
    ppl[args.dtype] = served_ppl(src, held, work / f"ppl-{args.dtype}.json", log, dtype=args.dtype,
                                 max_tokens=args.max_tokens)
    save()
    for name in ckpts:
        ppl[name] = served_ppl(work / name, held, work / f"ppl-{name}.json", log, dtype=args.dtype,
                               max_tokens=args.max_tokens)
        save()
    ppl["fp8-kv-no-scales"] = served_ppl(src, held, work / "ppl-fp8kv-none.json", log, dtype=args.dtype,
                                         max_tokens=args.max_tokens, kv_cache_dtype="fp8")
    save()
    kvonly = work / "kv-only-ours"
    if not kvonly.exists():
        try:
            cli("quantize", src, str(arrow), "--out", str(kvonly), "--kv-only", log=log)
        except SystemExit as e:
            print(f"  kv-only: {e}")
    if kvonly.exists():
        ppl["fp8-kv-ours"] = served_ppl(kvonly, held, work / "ppl-fp8kv-ours.json", log, dtype=args.dtype,
                                        max_tokens=args.max_tokens, kv_cache_dtype="fp8")
    save()

    if not args.skip_sites:
        _sites(args, src, work, held, arrow, res, res_path)
    print(json.dumps({k: v.get("ppl") if isinstance(v, dict) else v for k, v in res.get("ppl", {}).items()}, indent=1))


def _sites(args, src, work, held, arrow, res, res_path) -> None:
    print("[5] per-site losses", flush=True)
    t0 = time.time()
    toks = [t[:256] for t in json.loads(held.read_text())[: args.site_samples]]
    sl = site_losses(src, arrow, toks)
    sites = sl["sites"]
    names = sorted(sites)
    d = [sites[n]["delta_nll"] for n in names]
    res["sites"] = sl
    res["rank_correlation"] = {
        "sqnr_vs_delta_nll": spearman([sites[n]["sqnr_db"] for n in names], d),
        "absmax_vs_delta_nll": spearman([sites[n]["absmax"] for n in names], d),
        "n_sites": len(names),
    }
    for kind in LINEAR_KINDS:
        ks = [n for n in names if n.endswith("." + kind)]
        res["rank_correlation"][f"sqnr_vs_delta_nll_{kind}"] = spearman(
            [sites[n]["sqnr_db"] for n in ks], [sites[n]["delta_nll"] for n in ks])
    print(f"  {len(names)} sites in {time.time() - t0:.0f} s: {res['rank_correlation']}", flush=True)
    res_path.write_text(json.dumps(res, indent=1))


def _served_sites(args, src, work: Path, heldout: Path, log: Path) -> None:
    """Step 6: the loss of quantizing one site alone, served by vLLM, for sites spread over the
    INT-8 check's SQNR ranking, and the rank correlation."""
    import shutil

    import numpy as np

    print(f"[6] served per-site losses ({args.served_sites} sites)", flush=True)
    res = json.loads((work / "results.json").read_text())
    zp = res["input_zero_point"]
    arrow = work / "calib.arrow"
    rows = {n: r for n, r in replay_rows(arrow).items() if r["kind"] in LINEAR_KINDS}
    ranked = sorted(rows, key=lambda n: rows[n]["int8_sqnr_db"])
    picked = [ranked[int(round(i))] for i in np.linspace(0, len(ranked) - 1, args.served_sites)]
    toks = work / f"heldout{args.served_site_samples}_tokens.json"
    toks.write_text(json.dumps(token_lists(src, heldout, args.served_site_samples, args.max_tokens)))
    out_path = work / "served-sites.json"
    done = json.loads(out_path.read_text()) if out_path.exists() else {}
    kw = dict(dtype=args.dtype, max_tokens=args.max_tokens)
    base = served_ppl(src, toks, work / f"ppl-sites-base{args.served_site_samples}.json", log, **kw)
    fake = json.loads((work / "sites.json").read_text())["sites"]["sites"] if (work / "sites.json").exists() else {}
    for site in picked:
        if site in done:
            continue
        ckpt = work / f"only-{site}"
        if not ckpt.exists():
            cli("quantize", src, str(arrow), "--out", str(ckpt), "--threshold", "max", "--only-sites", site,
                "--no-kv-cache", *(["--input-zero-point"] if zp else []), log=log)
        r = served_ppl(ckpt, toks, work / f"ppl-only-{site}.json", log, **kw)
        shutil.rmtree(ckpt, ignore_errors=True)
        if "error" in r:
            print(f"  {site}: {r['error']}", flush=True)
            continue
        done[site] = {"delta_nll": r["nll"] / r["tokens"] - base["nll"] / base["tokens"],
                      "sqnr_db": rows[site]["int8_sqnr_db"], "absmax": rows[site]["absmax"],
                      "fake_quant_delta_nll": fake.get(site, {}).get("delta_nll")}
        out_path.write_text(json.dumps(done, indent=1))
    names = sorted(done)
    d = [done[n]["delta_nll"] for n in names]
    summary = {"n_sites": len(names), "tokens": base["tokens"],
               "sqnr_vs_delta_nll": spearman([done[n]["sqnr_db"] for n in names], d),
               "absmax_vs_delta_nll": spearman([done[n]["absmax"] for n in names], d)}
    both = [n for n in names if done[n]["fake_quant_delta_nll"] is not None]
    if len(both) > 2:
        summary["served_vs_fake_quant"] = spearman([done[n]["delta_nll"] for n in both],
                                                   [done[n]["fake_quant_delta_nll"] for n in both])
    res["served_sites"] = summary
    (work / "results.json").write_text(json.dumps(res, indent=1))
    print(f"  {summary}", flush=True)


ROWS = [
    # Every W8A8 checkpoint carries a kv_cache_scheme with its k / v scales, and vLLM then stores the
    # KV cache in FP8 with them even at kv_cache_dtype "auto" (vllm/model_executor/layers/attention).
    ("bfloat16", "unquantized (bf16 weights, activations, KV cache)"),
    ("w8a8-static-max", "W8A8, static per-tensor activation scales, our `max` thresholds"),
    ("w8a8-static-p999", "W8A8, static, our `p999` thresholds"),
    ("w8a8-smooth-static-max", "SmoothQuant (alpha 0.5, our channel maxima) + W8A8 static `max`"),
    ("w8a8-static-max-keep-sqnr15", "W8A8 static `max`, sites under 15 dB INT-8 check SQNR left unquantized "
     "(`--keep-below-sqnr 15`)"),
    ("w8a8-static-max-keep-down", "W8A8 static `max`, every `down_proj` left unquantized (`--keep-sites "
     "'layers.*.down_in'`)"),
    ("w8a8-dynamic", "W8A8, dynamic per-token activation scales (vLLM's own)"),
    ("llmc-w8a8-static-zp", "llm-compressor 0.14 static W8A8 (its own calibration, same samples)"),
    ("llmc-w8a8-static", "llm-compressor 0.14 static W8A8 as it writes it (symmetric: AMX ignores the scales)"),
    ("w8a8-static-max-symmetric", "W8A8 static `max`, scales written symmetric (AMX: vLLM ignores them)"),
    ("fp8-kv-no-scales", "bf16 weights, FP8 KV cache without scales (scale 1)"),
    ("fp8-kv-ours", "bf16 weights, FP8 KV cache with our `k` / `v` scales (`--kv-only`)"),
]


def render(work: Path) -> str:
    """The RESULTS.md table of a finished run."""
    import numpy as np

    res = json.loads((work / "results.json").read_text())
    ppl = res.get("ppl", {})
    base = ppl.get(res["dtype"], {}).get("ppl")
    lines = [f"Held-out perplexity served by vLLM ({res['model']}, {res['dtype']} activations, "
             f"{res['heldout_samples']} held-out samples x <= {res['max_tokens']} tokens, calibration "
             f"{res['calib_samples'] // 2} samples; input zero point {res.get('input_zero_point')}):", "",
             "| configuration | perplexity | vs unquantized | greedy: \"The capital of France is\" |", "|---|---|---|---|"]
    for key, label in ROWS:
        r = ppl.get(key if key != "bfloat16" else res["dtype"])
        if not r:
            continue
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | |")
            continue
        rel = f"{(r['ppl'] / base - 1) * 100:+.2f}%" if base else ""
        lines.append(f"| {label} | {r['ppl']:.3f} | {rel} | {r['sample'].strip()[:40]!r} |")
    peer = res.get("peer_scales")
    if peer:
        lines += ["", "Activation scales, ours (`max`) / llm-compressor's, per site kind (median, min, max over layers):",
                  "", "| tensor | median | min | max |", "|---|---|---|---|"]
        groups: dict[str, list[float]] = {}
        for k, v in peer.items():
            rel = k.split("layers.", 1)[1].split(".", 1)[1]
            groups.setdefault(rel, []).append(v["ours"] / v["llmc"])
        for rel, r in sorted(groups.items()):
            lines.append(f"| {rel} | {np.median(r):.3f} | {min(r):.3f} | {max(r):.3f} |")
    sites = work / "sites.json"
    if sites.exists():
        rc = json.loads(sites.read_text())["rank_correlation"]
        lines += ["", f"Per-site rank correlation over {rc['n_sites']} linear-input sites (Spearman): INT-8 check SQNR "
                  f"vs NLL increase {rc['sqnr_vs_delta_nll']:+.2f}; absmax vs NLL increase "
                  f"{rc['absmax_vs_delta_nll']:+.2f}; per kind (SQNR): "
                  + ", ".join(f"{k} {rc['sqnr_vs_delta_nll_' + k]:+.2f}" for k in LINEAR_KINDS) + "."]
    served = res.get("served_sites")
    if served:
        lines += ["", f"Served by vLLM, {served['n_sites']} sites spread over the SQNR ranking, each quantized alone "
                  f"(`quantize --only-sites`, {served['tokens']} held-out tokens): Spearman SQNR vs NLL increase "
                  f"{served['sqnr_vs_delta_nll']:+.2f}, absmax vs NLL increase {served['absmax_vs_delta_nll']:+.2f}"
                  + (f"; served vs transformers fake-quant losses {served['served_vs_fake_quant']:+.2f}"
                     if "served_vs_fake_quant" in served else "") + "."]
    return "\n".join(lines)


def render_models(works: list[Path]) -> str:
    """One compact table for several finished runs (a column per model): the README's."""
    results = [json.loads((w / "results.json").read_text()) for w in works]
    skip = {"llmc-w8a8-static", "w8a8-static-max-symmetric"}  # the AMX caveat rows: docs only
    lines = ["| configuration | " + " | ".join(f"{r['model']}" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for key, label in ROWS:
        if key in skip:
            continue
        cells = []
        for r in results:
            ppl = r.get("ppl", {})
            row, base = ppl.get(key if key != "bfloat16" else r["dtype"]), ppl.get(r["dtype"], {}).get("ppl")
            ok = row and "error" not in row
            cells.append(f"{row['ppl']:.2f} ({(row['ppl'] / base - 1) * 100:+.1f}%)" if ok and key != "bfloat16"
                         else f"{row['ppl']:.2f}" if ok else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--render":
        works = [Path(a) for a in sys.argv[2:]]
        print(render(works[0]) if len(works) == 1 else render_models(works))
        sys.exit()
    main()
