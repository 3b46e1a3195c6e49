"""Replay progress: the bar, its ETA, and how long a corpus would take at a measured rate.

A prompt's forward costs more per token the longer the prompt (attention reads every earlier
position), so tokens/s measured on one mix of lengths mispredicts another: on a 2-core AVX2
EPYC (float32 SmolLM2-135M) 4,096-token prompts run at about half the tokens/s of 512-token
ones. ETA and estimates therefore count *work*, ``sample_work(n)``: a prompt's token count
weighted by its length (see ``LONG_CONTEXT_TOKENS``), and divide the work left by the work per
second measured so far. Token counts and tokens/s are what the bar shows.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import IO

#: Work of an ``n``-token prompt: ``n * (1 + n / LONG_CONTEXT_TOKENS)``, i.e. per-token cost
#: doubles at this prompt length. Fitted to prompt tok/s measured by prompt length on the 2-core
#: AVX2 EPYC (benchmarks/RESULTS.md, "the newcomer's first run"); used for the ETA and the
#: full-corpus estimate, never for results.
LONG_CONTEXT_TOKENS = 2048


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


class ReplayProgress:
    """A tqdm bar over the replay's prompt tokens; it moves as each sample finishes.

    ``start(lengths)`` (``run_replay``'s ``on_start``) sets the totals and starts the clock;
    ``sample(tokens)`` (``on_sample``) credits a finished sample; ``call(samples, tokens, gmax)``
    (``on_progress``) shows the running global max after each engine call. The postfix reads
    ``1,012 tok/s, ETA 0:32, 12/32 samples, max |x| 25,984``."""

    def __init__(self, *, disable: bool = False, file: IO[str] | None = None, desc: str = "replay") -> None:
        self.disable = disable
        self.file = file or sys.stderr
        self.desc = desc
        self.bar = None
        self.lengths: list[int] = []
        self.total_work = 0.0
        self.work = 0.0
        self.samples = 0
        self.tokens = 0
        self.gmax: float | None = None
        self.t0 = time.perf_counter()

    def start(self, lengths: Sequence[int]) -> None:
        from tqdm import tqdm

        self.lengths = list(lengths)
        self.total_work = sum(map(sample_work, self.lengths))
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=sum(self.lengths), unit="tok", desc=self.desc, disable=self.disable,
                        dynamic_ncols=True, file=self.file,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:,}/{total:,} tok [{elapsed}{postfix}]")
        self._show(refresh=True)

    def eta(self) -> float:
        """Seconds left: the work left over the work done per second since ``start``."""
        elapsed = time.perf_counter() - self.t0
        if self.work <= 0 or elapsed <= 0:
            return float("nan")
        return (self.total_work - self.work) * elapsed / self.work

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return self.tokens / elapsed if elapsed > 0 else float("nan")

    def sample(self, tokens: int) -> None:
        self.samples += 1
        self.tokens += tokens
        self.work += sample_work(tokens)
        if self.bar is not None:
            self._show(refresh=False)
            self.bar.update(tokens)

    def call(self, samples: int, tokens: int, gmax: float | None) -> None:
        self.gmax = gmax
        if self.bar is not None:
            self._show(refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _show(self, refresh: bool) -> None:
        parts = [f"{self.rate():,.0f} tok/s", f"ETA {clock(self.eta())}"] if self.tokens else []
        parts.append(f"{self.samples}/{len(self.lengths)} samples")
        if self.gmax is not None:
            parts.append(f"max |x| {self.gmax:,.0f}")
        self.bar.set_postfix_str(", ".join(parts), refresh=refresh)
