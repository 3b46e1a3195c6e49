"""The vLLM entry point (group ``vllm.general_plugins``).

vLLM calls `register` once in every process (API server, engine core, workers) before any
model is built. We patch lazily: the model-runner classes are patched when their modules are
imported (only worker processes import them), so the API server pays nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from types import ModuleType

from vllm_maxact import __version__
from vllm_maxact.config import engine_config, get_config
from vllm_maxact.importhooks import when_imported

logger = logging.getLogger("vllm_maxact")

_PATCHED = "_vllm_maxact_patched"
def _is_vllm_helper_process() -> bool:
    """vLLM inspects model classes in a short-lived ``python -m
    vllm.model_executor.models.registry`` subprocess, which loads general plugins too. It runs
    no model: it must not become an instance's front end (runtime dir, exporter port)."""
    main = sys.argv[0] if sys.argv else ""
    return main.replace(os.sep, "/").endswith("vllm/model_executor/models/registry.py")


def register() -> None:
    from vllm_maxact.export.runtime import ensure_runtime_dir, is_ray_worker

    if _is_vllm_helper_process():
        return
    cfg = get_config()  # fails loudly, naming the bad field
    # Our RPC methods exist on every worker, recording or not: `read_stats` on an engine that
    # does not record gets a clear answer from them instead of a failed worker call.
    when_imported("vllm.v1.worker.worker_base", lambda m: _add_worker_methods(m.WorkerBase))
    # The switch is read again for each engine (`engine_config`): in one process an engine may
    # record and the next not. The patches below do nothing for an engine that does not record.
    when_imported("vllm.config.vllm", _patch_compile_hash)
    when_imported("vllm.v1.worker.gpu_model_runner", lambda m: _patch_runner(m.GPUModelRunner))
    when_imported("vllm.v1.worker.cpu_model_runner", lambda m: _patch_runner(m.CPUModelRunner))
    # vLLM's second-generation runner (the default for dense models on GPUs from 0.26).
    when_imported("vllm.v1.worker.gpu.model_runner", lambda m: _patch_runner(m.GPUModelRunner))
    when_imported("vllm.v1.worker.gpu_worker", lambda m: _patch_worker(m.Worker))
    when_imported("vllm.v1.worker.cpu_worker", lambda m: _patch_worker(m.CPUWorker))
    # An engine core whose workers run on Ray pulls their statistics over vLLM's RPC.
    when_imported("vllm.v1.engine.core", _patch_engine_core)
    if not cfg.enable:
        logger.info("vllm-maxact: disabled (VLLM_MAXACT_ENABLE=0)")
        return
    if is_ray_worker():
        # A Ray worker is never a front end (no runtime dir, exporter or snapshot writer), even
        # with the driver's environment copied in: its statistics leave it as RPC replies.
        logger.info("vllm-maxact %s: recording in a Ray worker; statistics relayed by its engine core",
                    __version__)
        return
    # The front end of an instance (API server / script) creates the runtime dir and hands it
    # to the processes vLLM starts through the environment.
    runtime_dir, front_end = ensure_runtime_dir(cfg.runtime_dir)
    if front_end:
        logger.info("vllm-maxact %s: recording; instance runtime dir %s", __version__, runtime_dir)
        _start_front_end(cfg, runtime_dir)
    from vllm_maxact.export import prometheus

    prometheus.install_front_end()


def _patch_engine_core(mod: ModuleType) -> None:
    from vllm_maxact.relay import patch_engine_core

    patch_engine_core(mod)


def compiled(vllm_config) -> bool:
    """Whether vLLM runs the model traced by torch.compile (any compilation mode; the GPU's
    piecewise Inductor graphs, the CPU build's single one), as opposed to eager
    (``enforce_eager``, mode NONE)."""
    cc = vllm_config.compilation_config
    mode = getattr(cc, "mode", None)
    if mode is None:
        mode = getattr(cc, "level", 0)
    return int(mode) != 0  # CompilationMode.NONE


def _start_front_end(cfg, runtime_dir) -> None:
    if cfg.snapshot_dir is not None:
        from vllm_maxact.export.snapshot import SnapshotWriter

        SnapshotWriter(cfg.snapshot_dir, runtime_dir, cfg.snapshot_interval_s, cfg.snapshot_retain).start()
    if cfg.exporter_port is not None:
        from vllm_maxact.export.prometheus import start_exporter

        try:
            start_exporter(cfg.exporter_port, cfg.exporter_host)
        except OSError as e:  # the port is taken: serve without the side exporter, say so
            logger.error("vllm-maxact: cannot listen on %s:%s for the exporter (%s); metrics stay available "
                         "on vLLM's /metrics. Set VLLM_MAXACT_EXPORTER_PORT to a free port.",
                         cfg.exporter_host, cfg.exporter_port, e)


def _patch_compile_hash(mod: ModuleType) -> None:
    """vLLM's compile-cache key ignores plugin code: an artifact traced without our hooks would
    load and silently skip them. Mix our version and site selection into the key."""
    cls = mod.VllmConfig
    if getattr(cls.compute_hash, _PATCHED, False):
        return
    original = cls.compute_hash

    @functools.wraps(original)
    def compute_hash(self, *args, **kwargs) -> str:
        import hashlib

        cfg = engine_config(self)
        if not cfg.enable:
            return original(self, *args, **kwargs)
        extra = f"vllm-maxact={__version__};{cfg.signature()}"
        return hashlib.sha256((original(self, *args, **kwargs) + extra).encode()).hexdigest()[:10]

    setattr(compute_hash, _PATCHED, True)
    cls.compute_hash = compute_hash


def _patch_runner(cls: type) -> None:
    if _PATCHED in cls.__dict__:
        return
    setattr(cls, _PATCHED, True)
    if "load_model" in cls.__dict__:
        original_load = cls.load_model

        @functools.wraps(original_load)
        def load_model(self, *args, **kwargs):
            out = original_load(self, *args, **kwargs)
            _attach(self)
            return out

        cls.load_model = load_model
    if "execute_model" in cls.__dict__:
        original_exec = cls.execute_model

        @functools.wraps(original_exec)
        def execute_model(self, scheduler_output, *args, **kwargs):
            rec = getattr(self, "_maxact_recorder", None)
            if rec is None or kwargs.get("dummy_run"):
                # Dummy runs (profiling, graph capture) carry fake tokens: n_valid stays 0.
                return original_exec(self, scheduler_output, *args, **kwargs)
            pub = self._maxact_publisher
            with pub.lock:
                rec.begin_step(int(scheduler_output.total_num_scheduled_tokens))
                try:
                    return original_exec(self, scheduler_output, *args, **kwargs)
                finally:
                    rec.end_step()
                    pub.after_step()

        cls.execute_model = execute_model
    if "sample_tokens" in cls.__dict__:
        original_sample = cls.sample_tokens

        @functools.wraps(original_sample)
        def sample_tokens(self, *args, **kwargs):
            # The step's second half (logits to tokens and logprobs): the publisher's idle
            # collect must not run beside it either. On the CPU build both share the process's
            # OpenMP threads, and vLLM's compiled CPU kernels size their reductions by the
            # threads they get: a collect during sampling changed a logprob's last bits.
            pub = getattr(self, "_maxact_publisher", None)
            if pub is None:
                return original_sample(self, *args, **kwargs)
            with pub.lock:
                try:
                    return original_sample(self, *args, **kwargs)
                finally:
                    pub.last_step = time.monotonic()

        cls.sample_tokens = sample_tokens


def _patch_worker(cls: type) -> None:
    """Warm-up may run whole fake steps through execute_model (the V2 runner does): forget
    everything recorded before the worker reports ready, and re-arm at the first real step."""
    if _PATCHED in cls.__dict__ or "compile_or_warm_up_model" not in cls.__dict__:
        return
    setattr(cls, _PATCHED, True)
    original = cls.compile_or_warm_up_model

    @functools.wraps(original)
    def compile_or_warm_up_model(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        rec = getattr(getattr(self, "model_runner", None), "_maxact_recorder", None)
        if rec is not None:
            rec.reset()
            rec._live = False
        return out

    cls.compile_or_warm_up_model = compile_or_warm_up_model


def _attach(runner) -> None:
    from vllm_maxact.instrument import instrument
    from vllm_maxact.publish import Publisher

    runner._maxact_recorder = None
    cfg = engine_config(runner.vllm_config)
    if not cfg.enable:
        return
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    try:
        rec = instrument(model, cfg, device=runner.device, compiled=compiled(runner.vllm_config),
                         max_tokens=runner.vllm_config.scheduler_config.max_num_batched_tokens)
    except Exception:  # never take the server down for a monitoring failure
        logger.exception("vllm-maxact: instrumenting %s failed; serving without recording", type(model).__name__)
        rec = None
    runner._maxact_recorder = rec
    if rec is not None:
        runner._maxact_publisher = Publisher(rec, runner.vllm_config, cfg, device=runner.device)


def _add_worker_methods(cls: type) -> None:
    from vllm_maxact import worker

    for name in worker.RPC_METHODS:
        setattr(cls, name, getattr(worker, name))
