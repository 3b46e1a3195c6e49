"""Device buffers per site, and the host side that reads them in windows.

The device side is a few persistent buffers per group of sites (`SiteGroup`, written by the
strategies of `vllm_maxact.hotpath`). The host side never touches
them during a forward: `Recorder.collect` runs in the worker thread between steps (stream
ordered after the forwards it reads), copies the buffers to the host, re-arms them, and folds
the window into the lifetime statistics. Windows are therefore exact: nothing recorded between
a copy and a reset can be lost, because both are queued on the same stream.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import torch
from torch import nn

from vllm_maxact import ops_int8
from vllm_maxact.hotpath import HotPath, Operand, as_operand, choose
from vllm_maxact.sites import CHANNEL_KINDS, Site
from vllm_maxact.stats import Stats


class SiteGroup(nn.Module):
    """The device buffers of one group of sites: one decoder layer's sites, or one model-level
    site (embedding, final norm).

    Each layer owns buffers of the same shape and addresses its sites by their position within
    the layer, so the compiled code of every decoder layer is identical: vLLM compiles a layer
    once and reuses it, as it does without the plugin (one global buffer indexed by a global
    slot would make every layer's graph different and multiply the cold compile time by the
    depth), and the fold's masked work is per layer, not per model.
    """

    def __init__(self, n: int, device: torch.device, int8: bool, channels: int = 0, width: int = 0) -> None:
        super().__init__()
        if channels:
            # Per-channel max |x| of the group's channel sites (attn_in, mlp_in), one row each.
            self.register_buffer("chan", torch.zeros(channels, width, dtype=torch.float32, device=device),
                                 persistent=False)
        # Registered buffers (non-persistent: never part of a checkpoint) so that Dynamo lifts them
        # as graph inputs with stable addresses, which CUDA-graph replay writes through.
        self.register_buffer("extrema", torch.empty(n, 2, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("counts", torch.zeros(n, 2, dtype=torch.int64, device=device), persistent=False)
        if int8:
            # Thresholds (max, p999) per site; accumulators of the reconstruction check; the
            # calibration histogram.
            self.register_buffer("qthr", torch.zeros(n, 2, dtype=torch.float32, device=device), persistent=False)
            self.register_buffer("qacc", torch.zeros(n, 2, 4, dtype=torch.float64, device=device), persistent=False)
            self.register_buffer("qcnt", torch.zeros(n, 2, 2, dtype=torch.int64, device=device), persistent=False)
            self.register_buffer("qhist", torch.zeros(n, ops_int8.HIST_BINS, dtype=torch.int64, device=device), persistent=False)


def _group_key(site: Site):
    return ("layer", site.layer) if site.layer is not None else ("model", site.kind)


class Recorder(nn.Module):
    """Owns the device buffers for one model replica (one worker / rank).

    Sites are numbered by slot (their order in ``sites``); on the device a slot lives at a
    position in its `SiteGroup`. The host side (`collect`, `Stats`) always sees all slots.
    """

    def __init__(
        self, sites: list[Site], device: torch.device, window_s: float = 60.0, int8: bool = False,
        int8_hist: bool = True, hot_path: str | HotPath | None = None, widths: dict[Site, int] | None = None,
        compiled: bool = True, chain_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.sites = list(sites)
        self.slot = {s: i for i, s in enumerate(self.sites)}
        #: how sites are folded in the forward (`vllm_maxact.hotpath`), chosen once
        self.strategy = hot_path if isinstance(hot_path, HotPath) else choose(hot_path, device, compiled)
        self.hot_path = self.strategy.name
        n = len(self.sites)
        members: dict[tuple, list[int]] = {}
        for i, s in enumerate(self.sites):
            members.setdefault(_group_key(s), []).append(i)
        #: slot -> (group index, position in the group); group -> its slots, in slot order
        self.where: list[tuple[int, int]] = [(0, 0)] * n
        self.group_slots: list[list[int]] = list(members.values())
        for g, slots in enumerate(self.group_slots):
            for k, slot in enumerate(slots):
                self.where[slot] = (g, k)
        self.int8 = int8
        self.int8_hist = int8 and int8_hist  # the calibration histogram (replay --int8-check only)
        # Channel sites (kinds in CHANNEL_KINDS): slot -> row in its group's `chan` buffer.
        widths = widths or {}
        self.chan_row: dict[int, int] = {}
        chan_rows: list[list[int]] = []
        for slots in self.group_slots:
            rows = [sl for sl in slots if self.sites[sl].kind in CHANNEL_KINDS]
            for r, sl in enumerate(rows):
                if self.sites[sl] not in widths:
                    raise ValueError(f"channel site {self.sites[sl]} needs its width (channels)")
                self.chan_row[sl] = r
            chan_rows.append(rows)
        #: channel sites in the order `collect` returns their rows, and their widths
        self.chan_slots = [sl for rows in chan_rows for sl in rows]
        self._chan_width = {sl: widths[self.sites[sl]] for sl in self.chan_slots}
        # One buffer width for every group (the widest channel site; narrower ones use a prefix),
        # so `collect` concatenates all groups' rows in one copy.
        width = max(self._chan_width.values(), default=0)
        self.groups = nn.ModuleList(
            SiteGroup(len(sl), device, int8, len(rows), width)
            for sl, rows in zip(self.group_slots, chan_rows, strict=True)
        )
        self.register_buffer("n_valid", torch.zeros(1, dtype=torch.int64, device=device), persistent=False)
        #: The residual stream of a compiled model, rebuilt in float32 from tensors the model has
        #: written anyway (`vllm_maxact.instrument.residual_chain`): [max tokens, hidden].
        self.register_buffer("chain", torch.zeros(chain_shape or (0, 0), dtype=torch.float32, device=device),
                             persistent=False)
        #: Row statistics waiting for their group's fold (see `defer` / `flush`): traced as a
        #: Python list inside one forward, always empty between forwards.
        self._deferred: set[int] = set()
        self._pending: dict[int, list[tuple[int, Operand]]] = {}
        #: Folds the strategy overlaps with the model (`HotPath.overlapped`), waiting for `join`:
        #: traced like `_pending`, empty between forwards.
        self._outstanding: list[tuple[int, list[Operand]]] = []
        if int8:
            # The phase (0 off, 1 calibrate, 2 evaluate), shared by every group.
            self.register_buffer("qmode", torch.zeros(1, dtype=torch.int64, device=device), persistent=False)
            self.int8_lifetime = (np.zeros((n, 2, 4)), np.zeros((n, 2, 2), np.int64))
            self.int8_windows: collections.deque = collections.deque()
            self.int8_last = (np.zeros((n, 2, 4)), np.zeros((n, 2, 2), np.int64))
            self.qthr_host = np.zeros((n, 2), np.float32)  # never read the device from a side thread
        self._arm()
        self._live = False
        self.window_s = window_s
        self._lock = threading.Lock()
        self._pending_tokens = 0
        self.lifetime = Stats.empty(self.sites)
        #: everything collected since the last `take_span` (whoever collected it: the periodic
        #: publisher moves the device window too, so a caller's span cannot be one window)
        self.span = Stats.empty(self.sites)
        self.windows: collections.deque[Stats] = collections.deque()
        self._window_start = time.time()
        self.last_collect = 0.0
        #: a window `start_collect` queued for the host: (event, host buffers, tokens, start, end)
        self._inflight: tuple | None = None
        self._pinned: list[torch.Tensor] | None = None

    # -- inside the forward (traced into the compiled graph) --------------------------------
    def record(self, slot: int, x: torch.Tensor | Operand | None) -> None:
        """Fold one site's value ``x`` (a tensor, any shape, last axis = features; or an `Operand`)
        into its slot; in a deferred group, at `flush`."""
        op = as_operand(x)
        if op is None:
            return
        g, k = self.where[slot]
        group = self.groups[g]
        if g in self._deferred:
            self._pending.setdefault(g, []).append((k, op))
        else:
            self._fold_sites(g, [k], [op])
        if slot in self.chan_row:
            self.strategy.record_channels(group.chan, self.n_valid, self.chan_row[slot], op.value())
        if self.int8:
            self.strategy.record_int8(group, self.qmode, self.n_valid, k, op.value(), self.int8_hist)

    def update_chain(self, op: Operand, group: int | None = None) -> None:
        """A chain update for a layer whose residual site is not recorded: with that layer's
        deferred group (folded with it), or alone."""
        if group is not None and group in self._deferred:
            self._pending.setdefault(group, []).append((-1, op))
        else:
            self._fold_sites(0, [-1], [op])

    def defer(self, slot: int) -> int:
        """Make ``slot``'s group fold once per forward, at `flush` (one kernel, or one CPU op
        call, per layer instead of one per site); the caller must call ``flush(group)`` after
        the group's last site."""
        g = self.where[slot][0]
        self._deferred.add(g)
        return g

    def flush(self, g: int) -> None:
        """Fold group ``g``'s pending sites."""
        pending = self._pending.pop(g, None)
        if pending:
            self._fold_sites(g, [k for k, _ in pending], [v for _, v in pending])

    def _fold_sites(self, g: int, positions: list[int], operands: list[Operand]) -> None:
        self.strategy.fold(self.groups[g], self.n_valid, positions, operands, self.chain)
        if self.strategy.overlapped:
            self._outstanding.append((g, operands))

    def join(self) -> None:
        """Wait for every overlapped fold so far (a join point: their tensors may be reused
        after it)."""
        while self._outstanding:
            g, operands = self._outstanding.pop(0)
            self.strategy.join(self.groups[g], operands)

    # -- host-side views (concatenated over groups, in slot order) --------------------------
    def _cat(self, name: str) -> torch.Tensor:
        return torch.cat([getattr(g, name) for g in self.groups])

    @property
    def qthr(self) -> torch.Tensor:
        return self._cat("qthr")

    @property
    def qhist(self) -> torch.Tensor:
        return self._cat("qhist")

    # -- per step (worker thread, outside the compiled graph) -------------------------------
    def begin_step(self, num_tokens: int) -> None:
        self._pending.clear()  # only a forward that raised can leave anything here
        self._outstanding.clear()
        if not self._live:
            # Warm-up, profiling and graph capture ran before this (with n_valid == 0, so they
            # should have recorded nothing); re-arm anyway so no start-up value can survive.
            self._live = True
            self._arm()
        self.n_valid.fill_(num_tokens)
        self._pending_tokens += num_tokens

    def end_step(self) -> None:
        # Anything that runs the model outside a real step (dummy, profile, graph capture)
        # sees n_valid == 0 and records nothing.
        self.n_valid.fill_(0)

    # -- reading ----------------------------------------------------------------------------
    @torch.no_grad()
    def _arm(self) -> None:
        for g in self.groups:
            g.extrema[:, 0].fill_(float("-inf"))
            g.extrema[:, 1].fill_(float("inf"))
            g.counts.zero_()
            if hasattr(g, "chan"):
                g.chan.zero_()
            if self.int8:
                g.qacc.zero_()
                g.qcnt.zero_()

    def _device_window(self) -> list[torch.Tensor]:
        """The window's device buffers, concatenated over groups (queued on the current stream):
        extrema, counts, then the channel rows and the INT-8 accumulators where present."""
        bufs = [self._cat("extrema"), self._cat("counts")]
        if self.chan_slots:
            bufs.append(torch.cat([g.chan for g in self.groups if hasattr(g, "chan")]))
        if self.int8:
            bufs += [self._cat("qacc"), self._cat("qcnt")]
        return bufs

    def _fold(self, host: list[np.ndarray], tokens: int, start: float, now: float) -> Stats:
        """Fold one window read to the host (``_device_window``'s arrays) into lifetime, span and
        the recent windows. Called with ``_lock`` held."""
        ext, cnt = host[0].astype(np.float64), host[1]
        chan = None
        if self.chan_slots:
            rows = host[2]
            chan = {sl: rows[i, : self._chan_width[sl]].astype(np.float64) for i, sl in enumerate(self.chan_slots)}
        win = Stats(self.sites, ext[:, 0], ext[:, 1], cnt[:, 0], cnt[:, 1], tokens, start, now, chan or {})
        self.last_collect = now
        self.lifetime = self.lifetime.merge(win)
        self.lifetime.end = now
        self.span = self.span.merge(win)
        if win.tokens:
            self.windows.append(win)
        while self.windows and self.windows[0].end < now - self.window_s:
            self.windows.popleft()
        if self.int8:
            qa, qc = host[-2], host[-1]
            self.int8_last = (qa, qc)
            self.int8_lifetime = (self.int8_lifetime[0] + qa, self.int8_lifetime[1] + qc)
            if win.tokens:
                self.int8_windows.append((now, qa, qc))
            while self.int8_windows and self.int8_windows[0][0] < now - self.window_s:
                self.int8_windows.popleft()
        return win

    def _next_window(self) -> tuple[int, float, float]:
        """Close the current window's bookkeeping: (its tokens, its start, now)."""
        now = time.time()
        out = (self._pending_tokens, self._window_start, now)
        self._pending_tokens = 0
        self._window_start = now
        return out

    @torch.no_grad()
    def collect(self) -> Stats:
        """Move the device window to the host and re-arm the buffers (waits for the device).
        Folds in a window that `start_collect` left in flight first. Returns this window."""
        with self._lock:
            self._land(wait=True)
            host = [b.to("cpu").numpy() for b in self._device_window()]
            self._arm()
            return self._fold(host, *self._next_window())

    @torch.no_grad()
    def start_collect(self) -> bool:
        """Queue the window's copy to the host and the re-arm behind the work already queued on
        the current stream, without waiting for the device; `poll` folds the window in once the
        copy has landed (any `collect` does so first). The periodic publisher uses it after a
        step: waiting for the device there would leave it idle while the next step is prepared
        (vLLM schedules asynchronously). On CUDA the copy goes to pinned host buffers, reused
        (one window in flight at a time: returns False, doing nothing, while one is); on the CPU
        it is an ordinary copy whose fold waits for the next `poll` all the same."""
        with self._lock:
            if self._inflight is not None:
                return False
            bufs = self._device_window()
            cuda = bufs[0].device.type == "cuda"
            if cuda:
                if self._pinned is None or [b.shape for b in self._pinned] != [b.shape for b in bufs]:
                    self._pinned = [torch.empty(b.shape, dtype=b.dtype, pin_memory=True) for b in bufs]
                for h, b in zip(self._pinned, bufs, strict=True):
                    h.copy_(b, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                host = self._pinned
            else:
                event, host = None, bufs  # torch.cat made them: the re-arm does not touch them
            self._arm()
            self._inflight = (event, host, *self._next_window())
            return True

    def poll(self, wait: bool = False) -> bool:
        """Fold in the window `start_collect` left in flight if its copy has landed (``wait``:
        block until it has). True if a window was folded in."""
        with self._lock:
            return self._land(wait)

    def _land(self, wait: bool) -> bool:
        if self._inflight is None:
            return False
        event, host, tokens, start, now = self._inflight
        if event is not None:
            if not wait and not event.query():
                return False
            event.synchronize()
        self._inflight = None
        # On CUDA, copies out of the pinned buffers, which the next start_collect overwrites
        # (on the CPU the buffers were made for this window alone).
        self._fold([h.numpy().copy() if event is not None else h.numpy() for h in host], tokens, start, now)
        return True

    @property
    def in_flight(self) -> bool:
        return self._inflight is not None

    def take_span(self) -> Stats:
        """Everything recorded since the previous call (or reset), including what the periodic
        publisher collected meanwhile; starts the next span."""
        self.collect()
        with self._lock:
            span, self.span = self.span, Stats.empty(self.sites)
        return span

    def int8_recent(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.sites)
        acc, cnt = np.zeros((n, 2, 4)), np.zeros((n, 2, 2), np.int64)
        now = time.time()
        for t, a, c in self.int8_windows:
            if t >= now - self.window_s:
                acc, cnt = acc + a, cnt + c
        return acc, cnt

    @torch.no_grad()
    def set_int8(self, mode: int, thresholds: np.ndarray | None = None, clear_hist: bool = False) -> None:
        """Switch the INT-8 phase; called between steps (worker thread)."""
        if thresholds is not None:
            self.qthr_host = np.asarray(thresholds, dtype=np.float32).reshape(len(self.sites), 2)
            for g, slots in zip(self.groups, self.group_slots, strict=True):
                g.qthr.copy_(torch.as_tensor(self.qthr_host[slots]))
        if clear_hist:
            for g in self.groups:
                g.qhist.zero_()
        self.qmode.fill_(mode)

    def recent(self) -> Stats:
        """Union of the windows that ended within the last ``window_s`` seconds."""
        now = time.time()
        out = Stats.empty(self.sites, now - self.window_s)
        for w in self.windows:
            if w.end >= now - self.window_s:
                out = out.merge(w)
        out.start, out.end = now - self.window_s, now
        return out

    def reset(self) -> None:
        """Forget everything: device buffers, lifetime and windows."""
        with self._lock:
            self._inflight = None  # its copy lands in buffers nobody reads before the next one
            self._arm()
            self._pending_tokens = 0
            self.lifetime = Stats.empty(self.sites)
            self.span = Stats.empty(self.sites)
            self.windows.clear()
            self._window_start = time.time()
            if self.int8:
                n = len(self.sites)
                self.int8_lifetime = (np.zeros((n, 2, 4)), np.zeros((n, 2, 2), np.int64))
                self.int8_windows.clear()
