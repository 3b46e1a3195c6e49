"""The stub objects behind tests/stubs/torchvision (see its docstring)."""

import enum


class Stub:
    """Anything: attribute access and calls give more stubs; usable as a base class."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Stub()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Stub()

    def __mro_entries__(self, bases):
        return (object,)


def module_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return Stub()


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
