"""The INT-8 reconstruction check's per-forward op (opt-in: only traced with replay
--int8-check or a calibration file in serving; the always-on hot paths are `vllm_maxact.hotpath`).

Plain tensor ops traced into vLLM's compiled graph, persistent
buffers updated in place, padding rows masked by ``n_valid``, nothing leaves the device.
"""

from __future__ import annotations

import torch

from vllm_maxact.hotpath.cpu_op import register_cpu_op

#: log2 histogram of |x| for percentile calibration: bin 0 holds zeros, then BINS_PER_OCTAVE bins
#: per octave from 2**HIST_MIN_EXP to 2**(HIST_MIN_EXP + HIST_OCTAVES); the ends saturate.
BINS_PER_OCTAVE = 32
HIST_MIN_EXP = -32
HIST_OCTAVES = 72
HIST_BINS = 1 + BINS_PER_OCTAVE * HIST_OCTAVES
QMAX = 127.0


def record_int8(
    qthr: torch.Tensor, qacc: torch.Tensor, qcnt: torch.Tensor, qhist: torch.Tensor, qmode: torch.Tensor,
    n_valid: torch.Tensor, slot: int, x: torch.Tensor, with_hist: bool = True,
) -> None:
    """Per-tensor symmetric INT-8 round trip of ``x`` at thresholds ``qthr[slot]`` (one per
    column), accumulated on the device: no activation leaves it.

    qmode 1 (calibrate): add |x| to the log2 histogram ``qhist[slot]``.
    qmode 2 (evaluate):  qacc[slot, t] += (sum x^2, sum |x|, sum err^2, sum |err|),
                         qcnt[slot, t] += (clipped, elements), where err = x - dequant(quant(x)).
    """
    x2 = x.reshape(-1, x.shape[-1]).float()
    rows = torch.arange(x2.shape[0], device=x2.device)
    keep = (rows < n_valid).unsqueeze(1) & torch.isfinite(x2)
    xs = torch.where(keep, x2, 0.0)
    a = xs.abs()
    if with_hist:  # a Python constant: live drift (no calibration phase) traces no histogram
        b = torch.floor((torch.log2(a) - HIST_MIN_EXP) * BINS_PER_OCTAVE).clamp(0, HIST_BINS - 2) + 1
        b = torch.where(a > 0, b, 0.0).long()
        w = (keep & (qmode == 1)).long()
        qhist[slot].index_add_(0, b.flatten(), w.flatten())
    # Reconstruction error at each threshold.
    thr = qthr[slot]  # [T]
    scale = torch.where(thr > 0, thr / QMAX, 1.0)
    xq = xs.unsqueeze(-1)  # [N, H, 1]
    deq = torch.clamp(torch.round(xq / scale), -QMAX, QMAX) * scale
    err = xq - deq
    on = ((qmode == 2) & (thr > 0)).unsqueeze(-1)  # [T, 1]
    sums = torch.stack(
        (
            (xs * xs).sum().expand(thr.shape[0]),
            a.sum().expand(thr.shape[0]),
            (err * err).sum((0, 1)),
            err.abs().sum((0, 1)),
        ),
        dim=-1,
    )  # [T, 4]
    counts = torch.stack(
        ((a.unsqueeze(-1) > thr).sum((0, 1)), keep.sum().expand(thr.shape[0])), dim=-1
    )  # [T, 2]
    qacc[slot].add_(torch.where(on, sums.double(), 0.0))
    qcnt[slot].add_(torch.where(on, counts, 0))


@register_cpu_op("record_int8_cpu", mutates_args=("qacc", "qcnt", "qhist"))
def record_int8_cpu(
    qthr: torch.Tensor, qacc: torch.Tensor, qcnt: torch.Tensor, qhist: torch.Tensor, qmode: torch.Tensor,
    n_valid: torch.Tensor, slot: int, x: torch.Tensor, with_hist: bool,
) -> None:
    """`record_int8` as one opaque op (the CPU hot path, see `ops.record_cpu`): the same code,
    run eagerly, skipped when the phase is off or nothing is valid."""
    if int(qmode[0]) == 0 or int(n_valid[0]) <= 0:
        return
    record_int8(qthr, qacc, qcnt, qhist, qmode, n_valid, slot, x, with_hist=with_hist)
