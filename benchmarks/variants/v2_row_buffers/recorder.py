"""Device buffers per site, and the host side that reads them in windows.

The device side is three persistent buffers (see `ops.record`). The host side never touches
them during a forward: `Recorder.collect` runs in the worker thread between steps (stream
ordered after the forwards it reads), copies the buffers to the host, re-arms them, and folds
the window into the lifetime statistics. Windows are therefore exact: nothing recorded between
a copy and a reset can be lost, because both are queued on the same stream.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vllm_maxact.sites import Site


@dataclass
class Stats:
    """Statistics of a set of sites over some span of tokens (host side, numpy)."""

    sites: list[Site]
    max: np.ndarray  # float64 [S], -inf where nothing finite was seen
    min: np.ndarray  # float64 [S], +inf where nothing finite was seen
    nan: np.ndarray  # int64 [S]
    inf: np.ndarray  # int64 [S]
    tokens: int = 0
    start: float = field(default_factory=time.time)
    end: float = field(default_factory=time.time)

    @classmethod
    def empty(cls, sites: list[Site], start: float | None = None) -> Stats:
        n = len(sites)
        now = time.time() if start is None else start
        return cls(
            list(sites),
            np.full(n, -np.inf),
            np.full(n, np.inf),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            0,
            now,
            now,
        )

    @property
    def absmax(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            a = np.maximum(np.abs(self.max), np.abs(self.min))
        a[~(np.isfinite(self.max) & np.isfinite(self.min))] = np.nan
        return a

    def merge(self, other: Stats) -> Stats:
        """Elementwise union of two spans of the same sites."""
        assert self.sites == other.sites
        return Stats(
            self.sites,
            np.maximum(self.max, other.max),
            np.minimum(self.min, other.min),
            self.nan + other.nan,
            self.inf + other.inf,
            self.tokens + other.tokens,
            min(self.start, other.start),
            max(self.end, other.end),
        )

    def copy(self) -> Stats:
        return Stats(
            list(self.sites),
            self.max.copy(),
            self.min.copy(),
            self.nan.copy(),
            self.inf.copy(),
            self.tokens,
            self.start,
            self.end,
        )


class Recorder(nn.Module):
    """Owns the device buffers for one model replica (one worker / rank)."""

    def __init__(self, sites: list[Site], device: torch.device, window_s: float = 60.0) -> None:
        super().__init__()
        self.sites = list(sites)
        self.slot = {s: i for i, s in enumerate(self.sites)}
        n = len(self.sites)
        # One running value per token row (see ops.py): the fold over rows happens at read time.
        # R must cover the largest forward (max_num_batched_tokens); a real version takes it from
        # the runner's vllm_config in plugin._attach. Variant v2: fixed for the benchmark.
        rows = int(os.environ.get("MAXACT_V2_ROWS", "16384"))
        # Registered buffers (non-persistent: never part of a checkpoint) so that Dynamo lifts them
        # as graph inputs with stable addresses, which CUDA-graph replay writes through.
        self.register_buffer("extrema", torch.empty(n, 2, rows, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("counts", torch.zeros(n, 2, rows, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("n_valid", torch.zeros(1, dtype=torch.int64, device=device), persistent=False)
        self._arm()
        self._live = False
        self.window_s = window_s
        self._lock = threading.Lock()
        self._pending_tokens = 0
        self.lifetime = Stats.empty(self.sites)
        self.windows: collections.deque[Stats] = collections.deque()
        self._window_start = time.time()
        self.last_collect = 0.0

    # -- per step (worker thread, outside the compiled graph) -------------------------------
    def begin_step(self, num_tokens: int) -> None:
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
        self.extrema[:, 0].fill_(float("-inf"))
        self.extrema[:, 1].fill_(float("inf"))
        self.counts.zero_()

    @torch.no_grad()
    def collect(self) -> Stats:
        """Move the device window to the host and re-arm the buffers. Returns that window."""
        with self._lock:
            folded = torch.stack((self.extrema[:, 0].amax(-1), self.extrema[:, 1].amin(-1)), 1)
            ext = folded.to("cpu").double().numpy()
            cnt = self.counts.sum(-1).to("cpu").numpy()
            self._arm()
            now = time.time()
            win = Stats(self.sites, ext[:, 0], ext[:, 1], cnt[:, 0], cnt[:, 1], self._pending_tokens,
                        self._window_start, now)
            self._pending_tokens = 0
            self._window_start = now
            self.last_collect = now
            self.lifetime = self.lifetime.merge(win)
            self.lifetime.end = now
            if win.tokens:
                self.windows.append(win)
            while self.windows and self.windows[0].end < now - self.window_s:
                self.windows.popleft()
            return win

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
            self._arm()
            self._pending_tokens = 0
            self.lifetime = Stats.empty(self.sites)
            self.windows.clear()
            self._window_start = time.time()
