"""The `vllm-maxact` command."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

DEFAULT_MODEL = "smollm2-135m"


def _engine_kwargs(tensor_parallel_size, dtype, max_model_len, engine_arg) -> dict:
    kw: dict = {"enable_prefix_caching": False}  # cached tokens are never computed, never observed
    if tensor_parallel_size:
        kw["tensor_parallel_size"] = tensor_parallel_size
    if dtype:
        kw["dtype"] = dtype
    if max_model_len:
        kw["max_model_len"] = max_model_len
    for item in engine_arg:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--engine-arg")
        k, v = item.split("=", 1)
        try:
            import json

            kw[k.replace("-", "_")] = json.loads(v)
        except ValueError:
            kw[k.replace("-", "_")] = v
    return kw


def _cpu_defaults() -> None:
    """Offline replay on the CPU backend.

    - vLLM reserves a fraction of the NUMA node's memory by default and refuses to start when
      other processes hold some of it; a fixed KV-cache size starts anywhere.
    - vLLM binds its worker's OpenMP threads to one logical CPU per core and keeps a core back
      for the serving front end (on a 2-core machine: one core computes). Replay's front end
      only queues prompts, so the worker gets every CPU this process may use: about 2x the
      prompt tokens/s on 2 cores (benchmarks/RESULTS.md). Either variable set by the user wins.
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_list())


def _cpu_dtype(dtype: str | None) -> str | None:
    """The engine dtype for replay on the CPU backend when --dtype is not given.

    On an x86 CPU without bf16 matrix instructions (neither AVX-512 BF16 nor AMX), vLLM's bf16
    GEMMs run about 10x slower than float32 (measured on an AVX2-only EPYC, 2 threads: 14 vs 134
    GFLOP/s), so replay of a bf16 checkpoint there runs in float32: closer to exact arithmetic
    than bf16, and a replay of minutes instead of hours. Everywhere else: the model's own dtype."""
    import platform

    import torch

    if dtype or torch.cuda.is_available() or platform.machine().lower() not in ("x86_64", "amd64"):
        return dtype
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return dtype
    return "float32"


def _data_parallel_engines(llm_cls, path: str, kwargs: dict, n: int) -> list:
    """``n`` engines of one model in this process. On the CPU build, unless the user bound the
    workers' threads, engine j computes on the j-th of ``n`` equal slices of this process's CPUs
    (the CPU build's workers bind their OpenMP threads when they start, from the environment)."""
    import torch

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    bind = not torch.cuda.is_available() and "VLLM_CPU_OMP_THREADS_BIND" in os.environ and len(cpus) >= n
    bind = bind and os.environ["VLLM_CPU_OMP_THREADS_BIND"] == cpu_list()  # our own default, not the user's
    engines = []
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    try:
        for j in range(n):
            if bind:
                part = cpus[j * len(cpus) // n:(j + 1) * len(cpus) // n]
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, part))
            engines.append(llm_cls(path, **kwargs))
    finally:
        if saved is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved
    return engines


def cpu_list() -> str:
    """The CPUs this process may run on, as vLLM's CPU list syntax ("0-3,6")."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    runs: list[list[int]] = []
    for c in cpus:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vllm-maxact")
def main() -> None:
    """Measure activation ranges inside vLLM: replay corpora, report, compare, export scales."""


#: The default replay on a CPU (no --samples, --full, --buckets or --int8-check, built-in corpus):
#: a fixed stratified sample that gives a complete result a few minutes after install on a
#: 2-core machine: every domain, QUICK_PER_DOMAIN samples each (seeded), their first
#: QUICK_MAX_TOKENS tokens. About 15k tokens, some 20 s of replay there after about 2 minutes of
#: model conversion and engine start (benchmarks/RESULTS.md). A safety net for slower or busier
#: machines: no engine call starts QUICK_DEADLINE_S after the command started (but the replay
#: gets at least QUICK_MIN_REPLAY_S, and every domain its first call), and the summary says when
#: that cut the sample.
QUICK_PER_DOMAIN = 4
QUICK_MAX_TOKENS = 512
QUICK_DEADLINE_S = 150.0
QUICK_MIN_REPLAY_S = 15.0


#: Tokens an engine step computes at most, replaying on a CPU (vLLM's default there: 4,096):
#: the same prompt tokens/s within noise, steps four times as short (benchmarks/RESULTS.md).
CPU_STEP_TOKENS = 1024


class _SamplesType(click.ParamType):
    name = "N|all"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value is None:
            return value
        if str(value).strip().lower() == "all":
            return "all"
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of samples nor 'all'", param, ctx)
        if n < 1:
            self.fail(f"{n} is not a positive number of samples", param, ctx)
        return n


@main.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Local folder, hub id, or bundled alias (smollm2-135m, gemma3-270m).")
@click.option("--corpus", default="builtin", show_default=True,
              help="builtin, FILE.jsonl, FILE.parquet, a folder of .txt files, or hf:NAME.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Arrow file to write [default: maxact-<model>.arrow].")
@click.option("--full", is_flag=True,
              help="The whole corpus, every sample at full length (the default on GPUs and for your own corpora).")
@click.option("--samples", type=_SamplesType(), default=None,
              help="Use N samples (deterministic with --seed), or 'all' (= --full). Without it, --full or "
              f"--buckets, a CPU replays {QUICK_PER_DOMAIN} samples of every domain of the built-in corpus, "
              f"their first {QUICK_MAX_TOKENS} tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-tokens", type=int, default=None, help="Truncate every sample to this many tokens.")
@click.option("--buckets", default=None,
              help="Length buckets 'TOKENS:PERCENT,...'; 'study' = 256:1,512:1,1024:2,2048:3,4096:93.")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Start no engine call after the replay has run this long, but each domain's first (every "
              "domain is covered); the result covers the samples replayed (the default sample on a CPU: until "
              f"{QUICK_DEADLINE_S:.0f} s after the command started, at least {QUICK_MIN_REPLAY_S:.0f} s).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="The fewest samples in one engine call (with --batch-seconds 0: exactly this many) "
              "[default: 32 on GPUs, 1 on CPUs].")
@click.option("--batch-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Size engine calls to take about this long (each ends with the engine drained); "
              "0 = every call --batch-size samples.")
@click.option("--min-batch-tokens", type=click.IntRange(min=0), default=None,
              help="The fewest tokens in one engine call when --batch-seconds is set "
              "[default: 16 x the engine's max_num_batched_tokens on GPUs, 0 on CPUs].")
@click.option("--tensor-parallel-size", "-tp", type=int, default=None)
@click.option("--data-parallel", "data_parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Spread the corpus over N engines; the statistics are merged exactly, as one engine's.")
@click.option("--dp-engines", type=click.Choice(["vllm", "separate"]), default="vllm", show_default=True,
              help="With --data-parallel: vLLM's own data parallel (one front end, vLLM balances requests), or N "
              "separate engines, each engine call split N ways by tokens (on the CPU build each on its own CPUs).")
@click.option("--dtype", default=None,
              help="Engine dtype (default: the model's; float32 on x86 CPUs without AVX-512 BF16 or AMX).")
@click.option("--max-model-len", type=int, default=None)
@click.option("--engine-arg", multiple=True, metavar="KEY=VALUE", help="Any other vllm.LLM argument.")
@click.option("--int8-check", is_flag=True,
              help="INT-8 reconstruction check at every site (calibrate, then evaluate), on the device.")
@click.option("--calib-samples", type=int, default=128, show_default=True, help="INT-8 calibration samples.")
@click.option("--eval-samples", type=int, default=256, show_default=True, help="INT-8 evaluation samples.")
@click.option("--kinds", default=None, metavar="LIST",
              help="Site kinds to record, comma separated; 'default' = the default set. E.g. "
              "'default,attn_in,mlp_in' adds per-channel input maxima (for --format smoothquant).")
@click.option("--skip-bad", is_flag=True, help="Skip malformed corpus lines (listed) instead of stopping.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def replay(model, corpus, out, full, samples, seed, max_tokens, buckets, budget, batch_size, batch_seconds,
           min_batch_tokens, tensor_parallel_size, data_parallel, dp_engines, dtype, max_model_len, engine_arg, int8_check, calib_samples,
           eval_samples, kinds, skip_bad, quiet) -> None:
    """Run a corpus prompt-only through vLLM with recording on; write an Arrow file and a summary.

    With no selection (--samples, --full, --buckets, --int8-check) on a CPU, a stratified sample
    of the built-in corpus: a complete result in a few minutes; --full replays all of it."""
    started = time.monotonic()
    from rich.console import Console

    from vllm_maxact import corpus as corpus_mod
    from vllm_maxact import models
    from vllm_maxact.export.arrow import safe_name
    from vllm_maxact.progress import ReplayProgress
    from vllm_maxact.replay import ReplayError, check_writable, computed_tokens, run_replay

    console = Console(stderr=True)
    if full and samples not in (None, "all"):
        raise click.UsageError("--full replays every sample; drop --samples N or --full")
    if samples == "all":
        samples, full = None, True
    quick = (corpus == corpus_mod.BUILTIN and not full and samples is None and not buckets and not int8_check
             and not _has_cuda())
    try:
        if quick:
            available = corpus_mod.load_corpus(corpus)
            data = corpus_mod.Corpus(corpus_mod.stratified(available, QUICK_PER_DOMAIN, seed), source=corpus,
                                     available=len(available))
        else:
            data = corpus_mod.load_corpus(corpus, samples=samples, seed=seed, skip_bad=skip_bad)
    except corpus_mod.CorpusError as e:
        raise click.ClickException(str(e)) from None
    targets = None
    if buckets:
        spec = corpus_mod.STUDY_BUCKETS if buckets == "study" else buckets
        try:
            targets = corpus_mod.bucket_plan(len(data), corpus_mod.parse_buckets(spec), seed)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--buckets") from None
    if quick and not max_tokens:
        max_tokens = QUICK_MAX_TOKENS
    if max_tokens:
        targets = [min(t, max_tokens) for t in targets] if targets else [max_tokens] * len(data)
    out = out or Path(f"maxact-{safe_name(Path(model).name if os.path.isdir(model) else model)}.arrow")
    try:
        check_writable(out)
        path = models.resolve_model(model)
    except (ReplayError, models.ModelError) as e:
        raise click.ClickException(str(e)) from None

    # Settings for the replay's engine travel in its config (vLLM hands it to every worker).
    settings: dict[str, Any] = {}
    if kinds:
        from vllm_maxact.config import DEFAULT_KINDS, parse_kinds

        names = [k.strip() for k in kinds.split(",") if k.strip()]
        names = [v for n in names for v in ([k.value for k in DEFAULT_KINDS] if n == "default" else [n])]
        try:
            chosen = dict.fromkeys(parse_kinds(names))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--kinds") from None
        settings["kinds"] = [k.value for k in chosen]
    if int8_check:
        settings["int8_check"] = True
    _cpu_defaults()
    from vllm import LLM

    what = (f"{len(data)} of {data.available} samples ({QUICK_PER_DOMAIN} per domain, first {max_tokens} tokens "
            "each; --full for all)" if quick else f"{len(data)} samples")
    console.print(f"[bold]vllm-maxact replay[/bold]: {model} on {corpus}: {what}")
    if dtype is None and (dtype := _cpu_dtype(None)):
        console.print(f"This CPU has no bf16 matrix instructions (AVX-512 BF16 or AMX): replaying in {dtype}, "
                      "about 10x faster here than bf16 (pass --dtype bfloat16 to measure bf16 itself).")
    kwargs = _engine_kwargs(tensor_parallel_size, dtype, max_model_len, engine_arg)
    if not _has_cuda():
        # The bar moves at each engine step inside a long sample; vLLM's CPU default (4,096
        # tokens a step) makes a step at 8k-token context take tens of seconds on 2 cores.
        kwargs.setdefault("max_num_batched_tokens", CPU_STEP_TOKENS)
    if model.strip().lower() in models.BUNDLED:  # the files and plots name the alias, not its cache folder
        kwargs.setdefault("served_model_name", model)
    from vllm_maxact.config import ENGINE_KEY

    kwargs["additional_config"] = {**kwargs.get("additional_config", {}), ENGINE_KEY: settings}
    if data_parallel == 1:
        llm = LLM(path, **kwargs)
    elif dp_engines == "vllm":
        from vllm_maxact.data_parallel import VllmDataParallel

        llm = VllmDataParallel(path, data_parallel, **kwargs)
        console.print(f"data parallel: vLLM's, {data_parallel} engines, statistics merged as one engine's")
    else:
        from vllm_maxact.data_parallel import EngineGroup

        llm = EngineGroup(_data_parallel_engines(LLM, path, kwargs, data_parallel))
        console.print(f"data parallel: {data_parallel} separate engines, statistics merged as one engine's")

    # On a CPU a step's cost follows its tokens, so short engine calls waste next to nothing:
    # calls of about --batch-seconds from the first few samples of each domain on (the bar and
    # the running maximum move within seconds, the first round sees every domain). On a GPU a
    # call's end costs a part-filled step: calls of at least 16 steps and 32 samples.
    gpu = _has_cuda()
    first_call = None
    if batch_size is None:
        batch_size = 32 if gpu else 1
    if not gpu:
        steps = llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        first_call = min(steps, max_tokens or steps)
        if min_batch_tokens is None:
            min_batch_tokens = 0
    if budget is None and quick:
        budget = max(QUICK_MIN_REPLAY_S, QUICK_DEADLINE_S - (time.monotonic() - started))
    progress = ReplayProgress(disable=quiet, computed=computed_tokens)
    try:
        result = run_replay(llm, data, model=model, targets=targets, batch_samples=batch_size,
                            batch_seconds=batch_seconds or None, min_batch_tokens=min_batch_tokens,
                            first_call_tokens=first_call, budget_s=budget, out=out, on_start=progress.start,
                            on_sample=progress.sample, on_progress=progress.call, int8_check=int8_check,
                            calib_samples=calib_samples, eval_samples=eval_samples)
    except ReplayError as e:
        raise click.ClickException(str(e)) from None
    finally:
        progress.close()
    full_run = None
    if quick:  # what the whole corpus would take here, at the rate just measured
        from vllm_maxact.progress import estimate_seconds

        limit = llm.llm_engine.vllm_config.model_config.max_model_len - 1
        texts = [s.text for s in available]
        lengths = [min(len(t), limit) for t in llm.get_tokenizer()(texts).input_ids]
        full_run = (len(texts), sum(lengths),
                    estimate_seconds(lengths, measured_lengths=result.lengths, measured_seconds=result.seconds))
    _replay_summary(result, data, model=model, out=out, quick=quick, max_tokens=max_tokens, budget=budget,
                    full_run=full_run, int8_check=int8_check)
    if hasattr(llm, "close"):  # the data-parallel engines: shut down before the interpreter exits
        llm.close()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _replay_summary(result, data, *, model, out, quick, max_tokens, budget, full_run, int8_check) -> None:
    """The end of a replay, on one screen: what ran, the maxima, and the commands to go on with."""
    import shlex

    from rich.console import Console

    from vllm_maxact import summary
    from vllm_maxact.progress import minutes

    domains = sorted(d for d in result.domains if d)
    ran = f"{result.samples:,} of {result.planned:,} samples" if not result.complete else f"{result.samples:,} samples"
    if quick:
        ran += f" of {data.available:,} ({QUICK_PER_DOMAIN} per domain, first {max_tokens} tokens each)"
    extra = {
        "replayed": f"{ran}, {result.tokens:,} tokens" + (f", {len(domains)} domains" if domains else ""),
        "throughput": f"{result.tokens_per_s:,.0f} prompt tok/s (start-up excluded)",
    }
    if not result.complete:
        extra["stopped"] = (f"time budget ({budget:.0f} s) reached: the sample depends on this machine's speed; "
                            "pass --budget to change it")
    if result.truncated:
        extra["truncated"] = f"{result.truncated} samples longer than the model allows (cut to its limit)"
    if data.problems:
        extra["skipped corpus records"] = f"{len(data.problems)} (e.g. {data.problems[0]})"
    extra["arrow"] = str(out)
    console = Console()
    summary.render(result.table, title=f"{model}: activation ranges", extra=extra, console=console, top=0,
                   compact=True)
    if int8_check:
        summary.render_int8(result.table, console=console)
    f = shlex.quote(str(out))
    other = "gemma3-270m" if model != "gemma3-270m" else DEFAULT_MODEL
    steps = [(f"vllm-maxact report {f}", "HTML page and PNG plots"),
             (f"vllm-maxact scales {f} --out scales.json", "static INT-8 / FP8 scales per site"),
             (f"vllm-maxact replay --model {other}", "another model, then side by side:"),
             (f"vllm-maxact compare {f} maxact-{other}.arrow", "")]
    if full_run is not None:
        n, tok, sec = full_run
        steps.append(("vllm-maxact replay --full", f"the whole corpus: {n} samples, {tok:,} tokens, about "
                                                     f"{minutes(sec)} here"))
    summary.render_next_steps(steps, console=console)


@main.command()
@click.option("--pid", type=int, default=None, help="Main pid of the vLLM server (default: newest instance).")
@click.option("--runtime-dir", type=click.Path(path_type=Path), default=None,
              help="The instance's runtime dir (logged by the server at start).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True)
def snapshot(pid, runtime_dir, out_dir) -> None:
    """Write an Arrow snapshot of a running vLLM instance on this machine, now."""
    from vllm_maxact.export.runtime import RuntimeDirError, check_private, discover, read_payloads
    from vllm_maxact.export.snapshot import write_snapshots

    try:
        if runtime_dir is None:
            found = discover(pid)
            if not found:
                raise click.ClickException(
                    "no running vLLM instance with vllm-maxact found" + (f" for pid {pid}" if pid else "")
                    + "; pass --runtime-dir (the server logs it at start)")
            runtime_dir = found[0]
        else:
            check_private(runtime_dir)
    except RuntimeDirError as e:
        raise click.ClickException(str(e).removeprefix("vllm-maxact: ")) from None
    payloads = read_payloads(runtime_dir)
    if not payloads:
        raise click.ClickException(f"{runtime_dir}: no live worker has published statistics")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in write_snapshots(out_dir, payloads):
            click.echo(str(p))
    except OSError as e:
        raise click.ClickException(f"cannot write a snapshot to {out_dir}: {e}") from None


def _load_report_table(path: Path):
    from vllm_maxact.report import ReportError, load

    try:
        return load(path)
    except ReportError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where PNGs and report.html go [default: <file stem>-report/].")
@click.option("--window", type=click.Choice(["replay", "lifetime", "recent"]), default=None,
              help="Window to report [default: replay if present, else lifetime].")
@click.option("--no-plots", is_flag=True, help="No PNGs (no matplotlib needed); report.html has the tables only.")
def report(file, out_dir, window, no_plots) -> None:
    """Print a report of an Arrow statistics file; write PNG plots and one self-contained report.html."""
    from rich.console import Console

    from vllm_maxact import report as rep

    table = _load_report_table(file)
    out_dir = out_dir or Path(f"{file.stem}-report")
    try:
        rep.select_view(table, window)
        rep.select_view(table, window, domains=True)  # every view the report uses, before printing any
        rep.print_report(table, Console(), window)
    except rep.ReportError as e:
        raise click.ClickException(f"{file}: {e}") from None
    pngs = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not no_plots:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise click.ClickException(
                    "plots need matplotlib: pip install 'vllm-maxact[report]' (or pass --no-plots)") from None
            pngs = rep.write_plots(table, out_dir, window)
        html = rep.write_html(table, out_dir / "report.html", pngs, window=window, source=file)
    except rep.ReportError as e:
        raise click.ClickException(f"{file}: {e}") from None
    except OSError as e:
        raise click.ClickException(f"cannot write the report to {out_dir}: {e}; pass another --out-dir") from None
    for p in [*pngs, html]:
        click.echo(str(p))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", default=None, help="Comma-separated labels, one per file [default: model names].")
@click.option("--window", type=click.Choice(["replay", "lifetime", "recent"]), default=None,
              help="Window to compare [default: replay if present, else lifetime, per file].")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="Write compare.png here.")
def compare(files, labels, window, out_dir) -> None:
    """Compare models side by side: global max M, per-kind maxima, ratios to the first file."""
    from rich.console import Console

    from vllm_maxact import report as rep

    if len(files) < 2:
        raise click.UsageError("compare needs at least two files (the first is the baseline)")
    names = [s.strip() for s in labels.split(",")] if labels else None
    if names is not None and len(names) != len(files):
        raise click.BadParameter(f"{len(names)} labels for {len(files)} files; give one label per file",
                                 param_hint="--labels")
    tables = [_load_report_table(f) for f in files]
    if names is None:
        names = []
        for f, t in zip(files, tables, strict=True):
            models = [m for m in t.column("model").to_pylist() if m] if "model" in t.column_names else []
            names.append(models[0] if models else f.stem)
        if len(set(names)) < len(names):  # same model twice: tell them apart by file
            names = [f.stem for f in files]
    for f, t in zip(files, tables, strict=True):
        try:
            rep.select_view(t, window)
        except rep.ReportError as e:
            raise click.ClickException(f"{f}: {e}") from None
    try:
        rows = rep.compare(list(zip(names, tables, strict=True)), window)
    except rep.ReportError as e:
        raise click.ClickException(str(e)) from None
    rep.print_compare(rows, Console())
    if out_dir:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException("plots need matplotlib: pip install 'vllm-maxact[report]'") from None
        try:
            click.echo(str(rep.plot_compare(rows, out_dir / "compare.png")))
        except OSError as e:
            raise click.ClickException(f"cannot write to {out_dir}: {e}; pass another --out-dir") from None



@main.command()
@click.argument("arrow_file", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "smoothquant"]), default="json",
              show_default=True, help="json/csv: per-site static scales; smoothquant: per-channel smoothing "
              "factors (needs attn_in/mlp_in sites and --model).")
@click.option("--threshold", type=click.Choice(["max", "p999"]), default="max", show_default=True,
              help="Which calibration threshold sets int8_scale (p999 needs replay --int8-check).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="smoothquant: the checkpoint folder (safetensors) the statistics were recorded on.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="smoothquant: migration strength (0 = all on activations, 1 = all on weights).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output file [default: stdout].")
def scales(arrow_file, fmt, threshold, model_dir, alpha, out) -> None:
    """Export static per-site activation scales (INT-8 and FP8 E4M3) from a replay Arrow file,
    or SmoothQuant per-channel smoothing factors (--format smoothquant).

    The JSON also serves as VLLM_MAXACT_CALIBRATION for live INT-8 drift metrics in serving;
    a smoothquant file feeds `vllm-maxact smooth`."""
    import csv
    import io

    from vllm_maxact.int8 import scales_document
    from vllm_maxact.report import ReportError, load

    if fmt == "smoothquant":
        from vllm_maxact import smoothquant

        if model_dir is None:
            raise click.UsageError("--format smoothquant needs --model (the checkpoint folder, for its weights)")
        if not (model_dir / "config.json").is_file():
            raise click.BadParameter(f"{model_dir} has no config.json", param_hint="--model")
        from safetensors import SafetensorError

        try:
            doc = smoothquant.document(load(arrow_file), model_dir, alpha=alpha, source=str(arrow_file))
        except (ReportError, smoothquant.SmoothQuantError) as e:
            raise click.ClickException(str(e)) from None
        except SafetensorError as e:
            raise click.ClickException(f"{model_dir}: a weight file cannot be read ({e})") from None
        _emit(json.dumps(doc, indent=1) + "\n", out, f"{len(doc['layers'])} smoothing vectors")
        return
    try:
        doc = scales_document(load(arrow_file), threshold=threshold, source=str(arrow_file))
    except (ReportError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if fmt == "json":
        text = json.dumps(doc, indent=1) + "\n"
    else:
        buf = io.StringIO()
        cols = ["site", "kind", "layer", "absmax", "threshold_max", "threshold_p999", "int8_scale", "fp8_e4m3_scale"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for name, row in doc["sites"].items():
            w.writerow({"site": name, **row})
        text = buf.getvalue()
    _emit(text, out, f"{len(doc['sites'])} site scales")


def _emit(text: str, out: Path | None, what: str) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    from vllm_maxact.export.atomic import write_atomic

    try:
        write_atomic(out, text.encode())
    except IsADirectoryError:
        raise click.ClickException(f"cannot write {out}: it is a directory; pass a file name, e.g. "
                                   f"--out {out / 'scales.json'}") from None
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"{what} -> {out}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("smoothing_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the smoothed checkpoint (must differ from MODEL_DIR).")
def smooth(model_dir, smoothing_file, out_dir) -> None:
    """Write a SmoothQuant-smoothed copy of a checkpoint (same function; flatter activations).

    SMOOTHING_FILE comes from `vllm-maxact scales FILE.arrow --format smoothquant --model MODEL_DIR`.
    Quantize the result with any W8A8 tool; see docs/int8-and-smoothquant.md."""
    from safetensors import SafetensorError

    from vllm_maxact import smoothquant

    try:
        doc = smoothquant.read_document(smoothing_file)
        smoothquant.apply(model_dir, doc, out_dir, progress=True)
    except smoothquant.SmoothQuantError as e:
        raise click.ClickException(str(e)) from None
    except SafetensorError as e:
        raise click.ClickException(f"{model_dir}: a weight file cannot be read ({e}); pass an intact checkpoint") from None
    except OSError as e:
        raise click.ClickException(f"cannot write {out_dir}: {e.strerror or e}") from None
    click.echo(f"smoothed {len(doc['layers'])} norm/linear groups (alpha {doc['alpha']}) -> {out_dir}")



@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("arrow_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the quantized checkpoint (must differ from MODEL_DIR).")
@click.option("--threshold", type=click.Choice(["max", "p999"]), default="max", show_default=True,
              help="Which calibration threshold sets each static scale (p999 needs replay --int8-check).")
@click.option("--kv-cache/--no-kv-cache", default=True, show_default=True,
              help="Write FP8 KV-cache scales (k_scale / v_scale) from the k / v sites.")
@click.option("--input-zero-point", is_flag=True,
              help="Describe the activation scales as asymmetric with zero point 0 (the same numbers): vLLM "
              "0.32's CPU build ignores static symmetric scales on AMX CPUs (see the README).")
@click.option("--dynamic", is_flag=True,
              help="Activations quantized per token at run time by vLLM instead of static scales (a baseline).")
@click.option("--kv-only", is_flag=True, help="Keep the weights; add only the FP8 KV-cache scales.")
@click.option("--keep-sites", default="", metavar="SITES",
              help="Comma-separated linear-input sites (names or patterns, e.g. 'layers.*.down_in,layers.0.*') "
              "left unquantized: mixed precision for the sites the INT-8 check flags.")
@click.option("--only-sites", default="", metavar="SITES",
              help="Quantize only these linear-input sites (names or patterns); the rest stay as they are.")
@click.option("--keep-below-sqnr", type=float, default=None, metavar="DB",
              help="Also leave unquantized every linear-input site whose INT-8 check SQNR is below DB "
              "(replay --int8-check), e.g. 15.")
def quantize(model_dir, arrow_file, out_dir, threshold, kv_cache, input_zero_point, dynamic, kv_only, keep_sites,
             only_sites, keep_below_sqnr) -> None:
    """Write a W8A8 INT8 compressed-tensors checkpoint that vLLM serves as is: int8 weights per
    output channel, static per-tensor activation scales from a replay of MODEL_DIR, and FP8
    KV-cache scales.

    ARROW_FILE: `vllm-maxact replay --model MODEL_DIR --kinds default,attn_in,o_in,mlp_in,down_in,k,v`
    (add --int8-check for --threshold p999). To smooth first: `smooth`, then replay the smoothed
    folder and quantize that. Serve with `kv_cache_dtype=fp8` for the KV-cache scales."""
    from safetensors import SafetensorError

    from vllm_maxact import quantize as q
    from vllm_maxact.report import ReportError, load

    try:
        q.build(model_dir, load(arrow_file), out_dir, threshold=threshold, kv_cache=kv_cache,
                input_zero_point=input_zero_point, dynamic=dynamic, kv_only=kv_only, source=str(arrow_file),
                only=_patterns(only_sites), keep=_patterns(keep_sites), keep_below_sqnr=keep_below_sqnr)
    except (q.QuantizeError, ReportError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except SafetensorError as e:
        raise click.ClickException(f"{model_dir}: a weight file cannot be read ({e})") from None
    except OSError as e:
        raise click.ClickException(f"cannot write {out_dir}: {e.strerror or e}") from None
    if kv_only:
        click.echo(f"FP8 KV-cache scales ({threshold} thresholds), weights unchanged -> {out_dir}")
        return
    acts = "dynamic per-token activations" if dynamic else f"static {threshold} activation scales"
    kept = len(json.loads((out_dir / q.SCALES_FILE).read_text()).get("unquantized", []))
    note = f", {kept} linear-input sites left unquantized" if kept else ""
    click.echo(f"W8A8 INT8 ({acts}{', FP8 KV-cache scales' if kv_cache else ''}{note}) -> {out_dir}")


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def vllm(args) -> None:
    """vLLM's own CLI (e.g. `vllm-maxact vllm serve MODEL`), also where vLLM is installed as
    `vllm-cpu`, whose `vllm` command cannot find its own version and exits."""
    from vllm_maxact.vllm_cli import main as run

    run(list(args))


if __name__ == "__main__":
    main()
