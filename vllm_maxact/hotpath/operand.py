"""How a site's tensor reaches the hot path: the model's own tensors, named (`Operand`). A leaf
module: adapters build operands without importing the strategies."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

#: `Operand.chain` modes
CHAIN_NONE, CHAIN_SET, CHAIN_ADD = 0, 1, 2


class Operand(NamedTuple):
    """One site's value as the model holds it: ``x``, or its first ``width`` columns, or
    ``x + addend`` rounded to x's dtype (vLLM's decoder layers return the residual stream as
    ``(hidden, residual)`` not yet added). With ``chain`` set, the recorder's float32 residual
    chain is set to (`CHAIN_SET`) or incremented by (`CHAIN_ADD`) ``x`` and then ``addend``, and
    the site's value is the chain (`Recorder.chain`)."""

    x: torch.Tensor
    addend: torch.Tensor | None = None
    width: int | None = None
    chain: int = CHAIN_NONE

    def value(self) -> torch.Tensor:
        """The site's tensor itself (a new graph node where it is a sum or a slice). Not for
        chain operands, whose value is the recorder's state."""
        if self.chain:
            raise ValueError("a chain operand's value is the recorder's chain, not a tensor")
        v = self.x if self.width is None else self.x[..., : self.width]
        if self.addend is not None:
            v = v + (self.addend if self.width is None else self.addend[..., : self.width])
        return v


def as_operand(v: Any) -> Operand | None:
    """An extractor's result (a tensor, an `Operand`, or None) as an `Operand`."""
    if v is None or isinstance(v, Operand):
        return v
    return Operand(v)


def value(v: Any) -> torch.Tensor | None:
    """An extractor's result as a plain tensor (references and tests)."""
    op = as_operand(v)
    return None if op is None else op.value()
