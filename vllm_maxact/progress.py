"""Replay progress: the bar, its ETA, and how long a corpus would take at a measured rate.

A prompt's forward costs more per token the longer the prompt (attention reads every earlier
position), so tokens/s measured on one mix of lengths mispredicts another: on 2 CPU cores an
8k-token prompt runs at about half the tokens/s of 512-token ones. ETA and estimates therefore
count *work*, ``sample_work(n)``: a prompt's token count weighted by its length (see
``LONG_CONTEXT_TOKENS``), and divide the work left by the work per second measured so far.
Token counts and tokens/s are what the bar shows.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

#: Work of an ``n``-token prompt: ``n * (1 + n / LONG_CONTEXT_TOKENS)``: the cost per token
#: doubles at this prompt length. Fitted to prompt tok/s by prompt length (float32
#: SmolLM2-135M, 2 cores): about 5,400 on an AVX-512 Xeon (1,169 tok/s at 512 tokens, 724 at
#: 4,096, 511 at 8,191: benchmarks/cpu_prompt_length.py), about 3,000-3,400 on an AVX2-only
#: EPYC (466 tok/s on samples cut at 1,024 tokens, 281-292 over the first half of the built-in
#: corpus); benchmarks/RESULTS.md. With 4,096 the default sample's rate predicts the whole
#: corpus within about 15% on both. Used for the ETA and that estimate, never for results.
LONG_CONTEXT_TOKENS = 4096


def sample_work(n: int) -> float:
    return n * (1.0 + n / LONG_CONTEXT_TOKENS)


def estimate_seconds(lengths: Sequence[int], *, measured_lengths: Sequence[int], measured_seconds: float) -> float:
    """Seconds to replay prompts of ``lengths`` at the rate measured replaying ``measured_lengths``
    in ``measured_seconds``."""
    done = sum(map(sample_work, measured_lengths))
    if done <= 0 or measured_seconds <= 0:
        return float("nan")
    return sum(map(sample_work, lengths)) * measured_seconds / done


def clock(seconds: float) -> str:
    """``1:05`` / ``1:02:03``; ``?`` when unknown."""
    if seconds != seconds or seconds < 0:  # NaN
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def minutes(seconds: float) -> str:
    """A duration for a sentence: ``40 s``, ``3 min``, ``1.5 h``."""
    if seconds != seconds:
        return "an unknown time"
    if seconds < 90:
        return f"{max(1, round(seconds)):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _width(file: IO[str]) -> dict:
    """tqdm follows the terminal's size, except where the terminal reports 0 x 0 (a
    pseudo-terminal nobody sized), where tqdm would draw nothing: then COLUMNS / LINES or 80 x 24."""
    import os
    import shutil

    try:
        if 0 in os.get_terminal_size(file.fileno()):
            cols, rows = shutil.get_terminal_size()
            return {"ncols": cols, "nrows": rows}
    except (AttributeError, OSError, ValueError):
        pass
    return {"dynamic_ncols": True}


class ReplayProgress:
    """A tqdm bar over the replay's prompt tokens: it moves as each sample finishes and, with
    ``computed`` (a function returning the tokens the engine has computed so far, e.g.
    `vllm_maxact.replay.computed_tokens`, polled every ``poll_s`` seconds), within long samples
    too, at each engine step.

    ``start(lengths)`` (``run_replay``'s ``on_start``) sets the totals and starts the clock;
    ``sample(tokens)`` (``on_sample``) credits a finished sample; ``call(samples, tokens, gmax)``
    (``on_progress``) shows the running global max after each engine call. The postfix reads
    ``1,012 tok/s, ETA 0:32, 12/32 samples, max |x| 25,984``."""

    def __init__(self, *, disable: bool = False, file: IO[str] | None = None, desc: str = "replay",
                 computed: Callable[[], int | None] | None = None, poll_s: float = 1.0) -> None:
        self.disable = disable
        self.file = file or sys.stderr
        self.desc = desc
        self.bar = None
        self.lengths: list[int] = []
        self.total_tokens = 0
        self.total_work = 0.0
        self.work = 0.0  # of finished samples
        self.samples = 0
        self.tokens = 0  # of finished samples
        self.computed = 0  # tokens computed (finished samples and parts of those in flight)
        self.gmax: float | None = None
        self.t0 = time.perf_counter()
        self._source = computed
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, lengths: Sequence[int]) -> None:
        from tqdm import tqdm

        self.lengths = list(lengths)
        self.total_tokens = sum(self.lengths)
        self.total_work = sum(map(sample_work, self.lengths))
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=self.total_tokens, unit="tok", desc=self.desc, disable=self.disable,
                        file=self.file, **_width(self.file),
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:,}/{total:,} tok [{elapsed}{postfix}]")
        self._show(refresh=True)
        if self._source is not None and not self.disable:
            self._thread = threading.Thread(target=self._poll, name="vllm-maxact-progress", daemon=True)
            self._thread.start()

    def work_done(self) -> float:
        """Finished samples' work, plus the tokens computed beyond them at the mean work per
        token of the samples not finished."""
        extra = self.computed - self.tokens
        left_tokens = self.total_tokens - self.tokens
        if extra <= 0 or left_tokens <= 0:
            return self.work
        return self.work + extra * (self.total_work - self.work) / left_tokens

    def eta(self) -> float:
        """Seconds left: the work left over the work done per second since ``start``."""
        elapsed = time.perf_counter() - self.t0
        done = self.work_done()
        if done <= 0 or elapsed <= 0:
            return float("nan")
        return (self.total_work - done) * elapsed / done

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return self.computed / elapsed if elapsed > 0 else float("nan")

    def sample(self, tokens: int) -> None:
        with self._lock:
            self.samples += 1
            self.tokens += tokens
            self.work += sample_work(tokens)
            self._advance(max(self.computed, self.tokens))

    def call(self, samples: int, tokens: int, gmax: float | None) -> None:
        with self._lock:
            self.gmax = gmax
            if self.bar is not None:
                self._show(refresh=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.bar is not None:
            self.bar.close()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                n = self._source()
            except Exception:  # progress must never fail the replay
                continue
            if n is not None:
                with self._lock:
                    self._advance(min(max(self.computed, n), self.total_tokens))

    def _advance(self, computed: int) -> None:
        step, self.computed = computed - self.computed, computed
        if self.bar is not None:
            self._show(refresh=False)
            self.bar.update(step)  # redraws (at most every 0.1 s), also for step 0

    def _show(self, refresh: bool) -> None:
        parts = [f"{self.rate():,.0f} tok/s", f"ETA {clock(self.eta())}"] if self.computed else []
        parts.append(f"{self.samples}/{len(self.lengths)} samples")
        if self.gmax is not None:
            parts.append(f"max |x| {self.gmax:,.0f}")
        self.bar.set_postfix_str(", ".join(parts), refresh=refresh)
