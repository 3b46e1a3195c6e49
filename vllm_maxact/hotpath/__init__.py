"""How a site's statistics are folded inside the forward: one strategy object per way, chosen
once per engine (`choose`), behind one interface (`HotPath`).

| strategy    | where          | what runs per forward                                            |
|-------------|----------------|------------------------------------------------------------------|
| `cpu_op`    | CPU (default)  | one opaque CPU op per decoder layer                              |
| `triton`    | CUDA (default) | one Triton kernel per layer, on a side stream when compiled      |
| `in_kernel` | CUDA, opt-in   | sites folded inside Triton copies of the model's norm / SiLU-mul |

The defaults are invisible: they only read tensors the model has already written, from ops
that Inductor cannot fuse into the model's kernels (extern calls), so the model's arithmetic,
and with it every logprob vLLM serves, is bit for bit what it is without the plugin. A site's
value is passed as the tensors the model holds (`Operand`): the residual stream as the pair a
decoder layer returns, the gate as the first columns of the merged projection. Adding them up
or slicing them in the graph would be new nodes Inductor could fuse into the next norm, and a
norm whose kernel changes shape may sum in another order. `in_kernel` replaces the model's
own norm and SiLU-and-mul kernels with recording ones (no extra launch at all) and so changes
their rounding: opt-in, and documented as such.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # pragma: no cover
    from vllm_maxact.recorder import SiteGroup


from vllm_maxact.hotpath.operand import CHAIN_ADD, CHAIN_NONE, CHAIN_SET, Operand, as_operand, value

__all__ = ["CHAIN_ADD", "CHAIN_NONE", "CHAIN_SET", "HotPath", "Operand", "STRATEGIES", "as_operand", "choose",
           "pack", "value"]


def pack(positions: list[int], operands: list[Operand]) -> tuple[list[int], list[torch.Tensor]]:
    """The ops' flat form of several sites: ``spec`` holds (position or -1, operand index, addend
    index or -1, width or -1, chain mode) per site; ``xs`` each distinct tensor once."""
    xs: list[torch.Tensor] = []
    index: dict[int, int] = {}

    def ref(t: torch.Tensor) -> int:
        if id(t) not in index:
            index[id(t)] = len(xs)
            xs.append(t)
        return index[id(t)]

    spec: list[int] = []
    for pos, op in zip(positions, operands, strict=True):
        spec += [pos, ref(op.x), -1 if op.addend is None else ref(op.addend), -1 if op.width is None else op.width,
                 op.chain]
    return spec, xs


class HotPath:
    """One way of folding sites inside the forward. `fold` is traced into vLLM's compiled graph
    (or runs eagerly); everything else runs once, when the model is instrumented."""

    name: ClassVar[str]
    #: device types it runs on
    devices: ClassVar[tuple[str, ...]]
    #: it changes the model's arithmetic (opt-in only)
    changes_outputs: ClassVar[bool] = False

    def __init__(self, compiled: bool = True) -> None:
        #: the model runs under torch.compile (False: vLLM's eager mode, enforce_eager)
        self.compiled = compiled

    @property
    def overlapped(self) -> bool:
        """Folds run concurrently with the model until `join`; the caller joins them at
        `vllm_maxact.instrument`'s join points."""
        return False

    def fold(self, group: SiteGroup, n_valid: torch.Tensor, positions: list[int], operands: list[Operand],
             chain: torch.Tensor) -> None:
        """Fold ``operands`` into ``group``'s buffers at ``positions`` (-1: a chain update only);
        ``chain``: the recorder's residual chain (empty when it keeps none)."""
        raise NotImplementedError

    def join(self, group: SiteGroup, operands: list[Operand]) -> None:
        """Wait for ``group``'s overlapped fold of ``operands`` (only when `overlapped`)."""

    def record_channels(self, chan: torch.Tensor, n_valid: torch.Tensor, row: int, x: torch.Tensor) -> None:
        """Per-channel max |x| of an opt-in channel site (attn_in, mlp_in) into ``chan[row]``."""
        from vllm_maxact.hotpath.cpu_op import channel_absmax

        m = channel_absmax(x, n_valid)
        sel = (torch.arange(chan.shape[0], device=chan.device) == row)[:, None]
        dst = chan[:, : m.shape[0]]  # the group's buffer is as wide as its widest channel site
        dst.copy_(torch.where(sel, torch.maximum(dst, m[None, :]), dst))

    def record_int8(self, group: SiteGroup, qmode: torch.Tensor, n_valid: torch.Tensor, pos: int, x: torch.Tensor,
                    with_hist: bool) -> None:
        from vllm_maxact.ops_int8 import record_int8

        record_int8(group.qthr, group.qacc, group.qcnt, group.qhist, qmode, n_valid, pos, x, with_hist=with_hist)

    def take_sites(self, rec, adapter, model, probes) -> set[int]:
        """Slots this strategy records without hooks (`in_kernel`); the rest get hooks."""
        return set()

    def describe(self) -> str:
        return self.name


class CpuOp(HotPath):
    """One opaque CPU op per decoder layer (`vllm_maxact.hotpath.cpu_op`)."""

    name = "cpu_op"
    devices = ("cpu",)

    def fold(self, group, n_valid, positions, operands, chain) -> None:
        from vllm_maxact.hotpath.cpu_op import record_cpu

        spec, xs = pack(positions, operands)
        record_cpu(group.extrema, group.counts, chain, n_valid, spec, xs)

    def record_channels(self, chan, n_valid, row, x) -> None:
        from vllm_maxact.hotpath.cpu_op import record_channels_cpu

        record_channels_cpu(chan, n_valid, row, x)

    def record_int8(self, group, qmode, n_valid, pos, x, with_hist) -> None:
        from vllm_maxact.ops_int8 import record_int8_cpu

        record_int8_cpu(group.qthr, group.qacc, group.qcnt, group.qhist, qmode, n_valid, pos, x, with_hist=with_hist)


class Triton(HotPath):
    """One Triton kernel per decoder layer (`vllm_maxact.hotpath.triton`). Compiled, it runs on a
    side stream: the model's next kernels do not wait for it, and the layer's tensors are kept
    unwritten until the join (at the next layer's attention, or the model's end), so under CUDA
    graphs the fold costs the main stream nearly nothing. Eager (enforce_eager), it runs in line,
    before any norm that takes its inputs in place."""

    name = "triton"
    devices = ("cuda",)

    def __init__(self, compiled: bool = True, device: torch.device | None = None) -> None:
        super().__init__(compiled)
        from vllm_maxact.hotpath import triton  # noqa: F401  (registers the ops)

        # Side stream only where there is one to overlap with (Triton's interpreter runs CPU
        # tensors in line); made now, never during a CUDA-graph capture.
        self._side = compiled and device is not None and torch.device(device).type == "cuda" \
            and os.environ.get("VLLM_MAXACT_SIDE_STREAM", "1") != "0"
        if self._side:
            triton.side_stream(torch.device(device))

    @property
    def overlapped(self) -> bool:
        return self._side

    def fold(self, group, n_valid, positions, operands, chain) -> None:
        spec, xs = pack(positions, operands)
        torch.ops.vllm_maxact.record_triton(group.extrema, group.counts, chain, n_valid, spec, xs, self._side)

    def join(self, group, operands) -> None:
        if self._side:
            _, xs = pack(list(range(len(operands))), operands)
            torch.ops.vllm_maxact.join_triton(group.extrema, xs)

    def describe(self) -> str:
        return "triton+side_stream" if self._side else "triton"


class InKernel(Triton):
    """Opt-in: the default sites of vLLM's Llama layout folded inside Triton versions of the
    model's fused add + RMSNorm and SiLU-and-mul (`vllm_maxact.hotpath.in_kernel`): no extra
    launch or read, but those kernels round differently from the ones vLLM generates, so the
    served logprobs change (benchmarks/RESULTS.md). Other sites: `Triton`, in line."""

    name = "in_kernel"
    changes_outputs = True

    def __init__(self, compiled: bool = True, device: torch.device | None = None) -> None:
        HotPath.__init__(self, compiled)
        from vllm_maxact.hotpath import triton  # noqa: F401

        self._side = False

    def take_sites(self, rec, adapter, model, probes) -> set[int]:
        from vllm_maxact.hotpath.in_kernel import fuse_sites

        return fuse_sites(rec, adapter, model, probes)

    def describe(self) -> str:
        return "in_kernel"


STRATEGIES: dict[str, type[HotPath]] = {s.name: s for s in (CpuOp, Triton, InKernel)}


def triton_available() -> bool:
    try:
        from vllm_maxact.hotpath import triton  # noqa: F401  (registers vllm_maxact::record_triton)
    except Exception:  # noqa: BLE001  (no triton, or a triton without a usable backend)
        return False
    return True


def choose(name: str | None, device: torch.device | str, compiled: bool = True) -> HotPath:
    """The strategy named ``name`` (None / 'auto': cpu_op on CPU, triton on CUDA) for a model on
    ``device``; ValueError naming the setting where it cannot run there."""
    dev = torch.device(device)
    if name in (None, "auto"):
        name = "cpu_op" if dev.type == "cpu" else "triton"
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"VLLM_MAXACT_HOT_PATH={name!r} is not a hot path; choose one of auto, "
                         f"{', '.join(STRATEGIES)}")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if dev.type not in cls.devices and not (cls is not CpuOp and interpreted):
        raise ValueError(f"VLLM_MAXACT_HOT_PATH={name} runs on {'/'.join(cls.devices)} models; this one is on "
                         f"{device} (use 'auto')")
    if cls is CpuOp:
        return CpuOp(compiled)
    if not triton_available():
        raise ValueError(f"VLLM_MAXACT_HOT_PATH={name} needs the triton package (vLLM's CUDA build brings it)")
    return cls(compiled, dev)
