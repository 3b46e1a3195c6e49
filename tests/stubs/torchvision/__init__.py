"""An import stub for torchvision, for text-only test runs on CPU machines (opt-in:
``MAXACT_TEST_TORCHVISION_STUB=1``, see tests/conftest.py).

vLLM's multimodal model modules (Qwen2.5-VL, Gemma 3, Qwen3.5) import transformers' image
processors, which import torchvision at module level; this project's CPU install has no
torchvision (no CPU wheel matches its torch). Served text-only (``language_model_only=True``)
those models never process an image, so every torchvision name here is a stub that only has to
exist: any submodule imports, any attribute is a `Stub`, and calling into one does nothing
useful. Nothing image-related may run under it.
"""

import importlib.abc
import importlib.machinery
import sys
import types

from torchvision._stub import InterpolationMode, module_getattr

__version__ = "0.0.0+stub"
__getattr__ = module_getattr


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Every ``torchvision.*`` submodule exists, as a stub package."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("torchvision.") and name not in sys.modules:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = module_getattr
        module.InterpolationMode = InterpolationMode
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_Finder())
