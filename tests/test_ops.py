"""The per-forward op and the recorder's windows, eager and compiled (fast, no vLLM engine)."""

import math
import os
import time

import numpy as np
import pytest
import torch

from vllm_maxact.recorder import Recorder
from vllm_maxact.sites import Kind, Site

SITES = [Site(Kind.EMBEDDING), Site(Kind.RESIDUAL, 0), Site(Kind.FINAL_NORM)]


def make(hot_path: str = "cpu_op") -> Recorder:
    return Recorder(SITES, device=torch.device("cpu"), hot_path=hot_path)


#: Every hot path that runs here: the opaque CPU op, and the Triton kernel (GPU), which runs here
#: only in Triton's interpreter: tests/test_ops_triton.py runs these tests again in a process
#: with TRITON_INTERPRET=1 (it must be set before Triton compiles anything, and must not reach
#: the vLLM engines of other tests).
HOT_PATHS = ["cpu_op"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
PATHS = pytest.mark.parametrize("hot_path", HOT_PATHS)


@PATHS
def test_padding_rows_are_ignored(hot_path):
    rec = make(hot_path)
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5], [1e6, -1e6]])  # last row is padding
    rec.begin_step(2)
    rec.record(1, x)
    rec.end_step()
    win = rec.collect()
    assert win.max[1] == 3.0 and win.min[1] == -2.0
    assert win.tokens == 2
    # Untouched sites stay empty, not zero: zero would be a valid maximum.
    assert win.max[0] == -math.inf and np.isnan(win.absmax[0])


@PATHS
def test_dummy_runs_record_nothing(hot_path):
    rec = make(hot_path)
    rec.begin_step(4)
    rec.end_step()  # a dummy/profile/capture forward runs with n_valid == 0
    rec.record(0, torch.full((8, 4), 7.0))
    assert rec.collect().max[0] == -math.inf


@PATHS
def test_nan_and_inf_are_counted_not_folded_into_extrema(hot_path):
    rec = make(hot_path)
    x = torch.tensor([[1.0, float("nan")], [float("inf"), -4.0], [float("-inf"), 2.0]], dtype=torch.bfloat16)
    rec.begin_step(3)
    rec.record(0, x)
    win = rec.collect()
    assert (win.max[0], win.min[0]) == (2.0, -4.0)
    assert (win.nan[0], win.inf[0]) == (1, 2)


@PATHS
def test_windows_and_lifetime(hot_path):
    rec = make(hot_path)
    for value, n in ((5.0, 3), (2.0, 4)):
        rec.begin_step(n)
        rec.record(1, torch.full((n, 2), value))
        rec.end_step()
        win = rec.collect()
        assert win.max[1] == value  # each window is only its own span
    assert rec.lifetime.max[1] == 5.0 and rec.lifetime.tokens == 7
    assert rec.recent().max[1] == 5.0
    rec.reset()
    assert rec.lifetime.tokens == 0 and rec.lifetime.max[1] == -math.inf


@PATHS
def test_queued_collect_lands_as_its_own_window(hot_path):
    """`start_collect` (the publisher's tick after a step) takes the window as it stood when it
    was queued; what later steps record goes to the next window, and nothing is lost or counted
    twice whether the queued window lands by `poll` or by a reading `collect`."""
    rec = make(hot_path)

    def step(value: float, n: int) -> None:
        rec.begin_step(n)
        rec.record(1, torch.full((n, 2), value))
        rec.end_step()

    step(9.0, 3)
    assert rec.start_collect() and rec.in_flight
    step(2.0, 4)  # after the tick: not part of the queued window
    assert not rec.start_collect()  # one window in flight at a time
    assert rec.lifetime.tokens == 0  # nothing folded before it lands
    assert rec.poll() and not rec.in_flight and not rec.poll()
    assert (rec.lifetime.max[1], rec.lifetime.tokens) == (9.0, 3)
    assert rec.windows[-1].max[1] == 9.0
    win = rec.collect()
    assert (win.max[1], win.min[1], win.tokens) == (2.0, 2.0, 4)
    # A reading collect folds a queued window first, then its own.
    step(7.0, 1)
    assert rec.start_collect()
    step(-3.0, 2)
    win = rec.collect()
    assert (win.max[1], win.min[1], win.tokens) == (-3.0, -3.0, 2)
    assert (rec.lifetime.max[1], rec.lifetime.min[1], rec.lifetime.tokens) == (9.0, -3.0, 10)
    span = rec.take_span()
    assert (span.max[1], span.min[1], span.tokens) == (9.0, -3.0, 10)
    # Reset drops a queued window: it was recorded before the reset.
    step(50.0, 2)
    assert rec.start_collect()
    rec.reset()
    assert not rec.in_flight and not rec.poll()
    step(1.0, 1)
    assert (rec.collect().max[1], rec.lifetime.max[1], rec.lifetime.tokens) == (1.0, 1.0, 1)


def test_publisher_publishes_a_queued_window_when_it_lands(tmp_path, monkeypatch):
    """The worker's publisher after each step: it queues the window's copy (never waiting for
    the device), publishes it at a later step once it has landed, and a reading publish (the
    idle loop's, when traffic stops) takes everything; the file never runs ahead of the data."""
    import json
    import types

    from vllm_maxact.config import MaxActConfig
    from vllm_maxact.export.runtime import HANDOFF
    from vllm_maxact.publish import Publisher

    monkeypatch.setenv(HANDOFF, str(tmp_path))
    rec = make("cpu_op")
    cfg = types.SimpleNamespace(model_config=types.SimpleNamespace(served_model_name="m", model="m"))
    pub = Publisher(rec, cfg, MaxActConfig(publish_interval_s=600.0, async_collect=True))
    try:
        for _ in range(200):  # the publisher thread's announcement (sites, no data) comes first
            if list(tmp_path.glob("worker-*.json")):
                break
            time.sleep(0.01)
        with pub.lock:
            pub.next_publish = 0.0  # the interval is up: the next step ticks
        def step(value: float, n: int) -> dict:
            with pub.lock:
                rec.begin_step(n)
                rec.record(1, torch.full((n, 2), value))
                rec.end_step()
                pub.after_step()
            (f,) = tmp_path.glob("worker-*.json")
            life = json.loads(f.read_text())["lifetime"]
            return {"tokens": life["tokens"], "max": life["max"][1]}

        assert step(9.0, 3)["tokens"] == 0  # queued, not landed: nothing published yet
        assert rec.in_flight
        assert step(2.0, 4) == {"tokens": 3, "max": 9.0}  # landed at the next step: published
        assert not rec.in_flight  # and no new tick before the interval
        assert step(11.0, 1) == {"tokens": 3, "max": 9.0}
        with pub.lock:
            pub.publish()  # the idle loop's publish once traffic stops
        (f,) = tmp_path.glob("worker-*.json")
        life = json.loads(f.read_text())["lifetime"]
        assert (life["tokens"], life["max"][1]) == (8, 11.0)
    finally:
        pub.stop()


def test_span_includes_what_the_publisher_collected():
    """Replay reads per-domain spans with `take_span` while the periodic publisher also moves the
    device window to the host: a span is everything since the previous `take_span`, not the last
    window (which would drop the publisher's part)."""
    rec = make("cpu_op")
    for value, n in ((9.0, 3), (2.0, 4)):
        rec.begin_step(n)
        rec.record(1, torch.full((n, 2), value))
        rec.end_step()
        rec.collect()  # the publisher's tick
    rec.begin_step(1)
    rec.record(1, torch.full((1, 2), 4.0))
    rec.end_step()
    span = rec.take_span()
    assert (span.max[1], span.tokens) == (9.0, 8)
    assert rec.take_span().tokens == 0  # the next span starts empty
    rec.begin_step(2)
    rec.record(1, torch.full((2, 2), 1.0))
    rec.end_step()
    rec.reset()
    assert rec.take_span().tokens == 0  # reset forgets the span too


@PATHS
def test_compiled_matches_eager_and_numpy(hot_path):
    """Inductor traces the op into a graph; its result must equal eager and a float64 truth."""
    torch.manual_seed(0)
    xs = [torch.randn(n, 64, dtype=torch.bfloat16) * s for n, s in ((5, 1.0), (17, 30.0), (9, 3.0))]
    valid = [5, 11, 9]

    def fwd(rec: Recorder, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        rec.record(0, y)
        rec.record(2, y + 1)
        return y

    eager, comp = make(hot_path), make(hot_path)
    compiled = torch.compile(fwd, backend="inductor", fullgraph=True, dynamic=True)
    for x, n in zip(xs, valid, strict=True):
        for rec, f in ((eager, fwd), (comp, compiled)):
            rec.begin_step(n)
            f(rec, x)
            rec.end_step()
    a, b = eager.collect(), comp.collect()
    truth = np.concatenate([(x[:n].double() * 2).numpy() for x, n in zip(xs, valid, strict=True)])
    assert a.max[0] == pytest.approx(truth.max(), rel=1e-6)
    assert a.min[0] == pytest.approx(truth.min(), rel=1e-6)
    np.testing.assert_allclose(b.max, a.max, rtol=1e-6)
    np.testing.assert_allclose(b.min, a.min, rtol=1e-6)
    assert a.tokens == b.tokens == sum(valid)


class _MLP(torch.nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.gate_up_proj = torch.nn.Linear(h, 2 * h, bias=False)
        self.down = torch.nn.Linear(h, h, bias=False)

    def forward(self, x):
        gu = self.gate_up_proj(x)
        return self.down(torch.nn.functional.silu(gu[..., : x.shape[-1]]) * gu[..., x.shape[-1]:])


class _DonatingNorm(torch.nn.Module):
    """Writes its output over its input, as vLLM's fused add + RMSNorm may (``maybe_inplace``):
    a recorder that still holds the input afterwards reads the norm's output instead."""

    def forward(self, x):
        return x.mul_(0.5)


class _Layer(torch.nn.Module):
    """vLLM's layout: returns (hidden, residual) not yet added."""

    def __init__(self, h: int, scale: float) -> None:
        super().__init__()
        self.self_attn = torch.nn.Linear(h, h, bias=False)
        self.post_attention_layernorm = _DonatingNorm()
        self.mlp = _MLP(h)
        self.scale = scale

    def forward(self, positions, hidden_states, residual):
        x = hidden_states if residual is None else hidden_states + residual
        a = self.post_attention_layernorm(self.self_attn(x)) * self.scale
        return self.mlp(x + a), x + a


class _Decoder(torch.nn.Module):
    def __init__(self, h: int, n: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_Layer(h, 1.0 + i) for i in range(n))
        self.norm = torch.nn.LayerNorm(h)

    def forward(self, x):
        residual = None
        for layer in self.layers:
            x, residual = layer(None, x, residual)
        return self.norm(x + residual)


class _Top(torch.nn.Module):
    def __init__(self, h: int = 32, n: int = 3) -> None:
        super().__init__()
        self.model = _Decoder(h, n)

    def forward(self, x):
        return self.model(x)


def _truth(model: _Top, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Every site's (max, min) from a plain re-computation, no hooks involved."""
    out: dict[str, tuple[float, float]] = {}

    def put(name, t):
        out[name] = (float(t.max()), float(t.min()))

    put("embedding", x)
    h, residual = x, None
    for i, layer in enumerate(model.model.layers):
        xin = h if residual is None else h + residual
        raw = layer.self_attn(xin)
        a = raw * 0.5 * layer.scale
        gu = layer.mlp.gate_up_proj(xin + a)
        m = layer.mlp(xin + a)
        put(f"layers.{i}.attn_out", raw)
        put(f"layers.{i}.gate", gu[..., : x.shape[-1]])
        put(f"layers.{i}.mlp_out", m)
        put(f"layers.{i}.residual", m + xin + a)
        h, residual = m, xin + a
    put("final_norm", model.model.norm(h + residual))
    return out


@PATHS
@pytest.mark.parametrize("compiled", [False, True])
def test_layer_groups_fold_once_per_layer_and_match_a_plain_forward(compiled, hot_path):
    """Per-layer buffers with one deferred fold per layer (the product's layout), eager and
    traced by Dynamo + Inductor in one graph: every site equals a hook-free recomputation, and
    no row statistics outlive the forward."""
    from vllm_maxact.adapters import Adapter
    from vllm_maxact.config import MaxActConfig
    from vllm_maxact.instrument import instrument

    torch.manual_seed(0)
    model = _Top().eval()
    rec = instrument(model, MaxActConfig(hot_path=hot_path), torch.device("cpu"), adapter=Adapter(), compiled=compiled)
    assert len(rec._deferred) == 3  # every layer folds once
    assert {len(s) for s in rec.group_slots} == {1, 4}  # embedding / final norm; 4 sites per layer
    fwd = torch.compile(model, fullgraph=True, dynamic=True) if compiled else model
    xs = [torch.randn(n, 32) * s for n, s in ((7, 1.0), (19, 20.0), (4, 3.0))]
    valid = [7, 15, 4]  # the middle batch has 4 padding rows
    with torch.no_grad():
        for x, n in zip(xs, valid, strict=True):
            rec.begin_step(n)
            fwd(x)
            rec.end_step()
            assert not rec._pending
        win = rec.collect()
        truths = [_truth(model, x[:n]) for x, n in zip(xs, valid, strict=True)]
    for i, site in enumerate(rec.sites):
        want_max = max(t[site.name][0] for t in truths)
        want_min = min(t[site.name][1] for t in truths)
        assert win.max[i] == pytest.approx(want_max, rel=1e-5, abs=1e-6), site.name
        assert win.min[i] == pytest.approx(want_min, rel=1e-5, abs=1e-6), site.name
    assert win.tokens == sum(valid)
    # The sites really differ (a slot mix-up between groups could not pass).
    assert len({round(float(v), 4) for v in win.max}) == len(rec.sites)


@PATHS
@pytest.mark.parametrize("compiled", [False, True])
def test_channel_sites_record_per_channel_absmax(compiled, hot_path):
    """The opt-in mlp_in site (input of the merged gate/up projection): per-channel max |x|
    over valid rows only, NaN left out, equal to a plain recomputation; scalar stats as usual."""
    from vllm_maxact.adapters import Adapter
    from vllm_maxact.config import MaxActConfig
    from vllm_maxact.instrument import instrument

    torch.manual_seed(1)
    model = _Top().eval()
    cfg = MaxActConfig(kinds="residual,mlp_in", hot_path=hot_path)
    rec = instrument(model, cfg, torch.device("cpu"), adapter=Adapter(), compiled=compiled)
    names = [s.name for s in rec.sites]
    assert names.count("layers.0.mlp_in") == 1 and len(rec.chan_slots) == 3
    fwd = torch.compile(model, fullgraph=True, dynamic=True) if compiled else model
    xs = [torch.randn(n, 32) * s for n, s in ((6, 1.0), (11, 5.0))]
    xs[1][:, 3] *= 50  # an outlier channel
    xs[1][9, 4] = 1e6  # in a padding row: must not count
    valid = [6, 9]
    with torch.no_grad():
        for x, n in zip(xs, valid, strict=True):
            rec.begin_step(n)
            fwd(x)
            rec.end_step()
        win = rec.collect()
        want = {}
        for x, n in zip(xs, valid, strict=True):
            h, residual = x[:n], None
            for i, layer in enumerate(model.model.layers):
                xin = h if residual is None else h + residual
                a = layer.self_attn(xin) * 0.5 * layer.scale
                m = (xin + a).abs().amax(0).double().numpy()
                key = f"layers.{i}.mlp_in"
                want[key] = np.maximum(want[key], m) if key in want else m
                h, residual = layer.mlp(xin + a), xin + a
    for slot in rec.chan_slots:
        name = rec.sites[slot].name
        np.testing.assert_allclose(win.chan[slot], want[name], rtol=1e-5, err_msg=name)
        assert win.absmax[slot] == pytest.approx(win.chan[slot].max(), rel=1e-6)  # same values, two reductions
    assert win.chan[rec.chan_slots[0]].argmax() == 3  # the outlier channel, not the padding row's
    # The per-channel vectors reach the Arrow table.
    from vllm_maxact.export.arrow import rows_from_stats
    from vllm_maxact.stats import to_wire

    rows = {r["site"]: r for r in rows_from_stats({}, names, to_wire(win), window="lifetime", rank=None)}
    assert rows["layers.1.residual"]["channel_absmax"] is None
    np.testing.assert_allclose(rows["layers.1.mlp_in"]["channel_absmax"], want["layers.1.mlp_in"], rtol=1e-5)


@PATHS
def test_residual_pair_is_summed_and_rounded_as_the_model_rounds_it(hot_path):
    """The residual stream is passed as the pair a decoder layer returns: the recorder adds it
    in float32 and rounds to the operands' dtype, as the next norm does (``(x.float() +
    r.float()).to(bf16)``), so the recorded extrema are exactly the served model's values, and
    no add node enters the model's graph. The gate is read as the first columns of the merged
    projection, in place."""
    from vllm_maxact.hotpath import Operand

    g = torch.Generator().manual_seed(3)
    h = (torch.randn(6, 40, generator=g) * 300).to(torch.bfloat16)
    r = (torch.randn(6, 40, generator=g) * 0.37 + 1).to(torch.bfloat16)
    merged = (torch.randn(6, 80, generator=g) * 5).to(torch.bfloat16)
    merged[:, 40:] *= 1000  # the up half: must not reach the gate's extrema
    rec = make(hot_path)
    rec.begin_step(5)  # the last row is padding
    rec.record(1, Operand(h, r))
    rec.record(2, Operand(merged, width=40))
    rec.end_step()
    win = rec.collect()
    want = (h[:5].float() + r[:5].float()).to(torch.bfloat16).double()
    assert (win.max[1], win.min[1]) == (float(want.max()), float(want.min()))
    # The float32 sum would differ: the test can tell a missing rounding.
    assert float((h[:5].float() + r[:5].float()).max()) != float(want.max())
    gate = merged[:5, :40].double()
    assert (win.max[2], win.min[2]) == (float(gate.max()), float(gate.min()))


def _compiled_outputs(model: torch.nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    torch._dynamo.reset()
    f = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        out = [f(x) for x in xs]
    torch._dynamo.reset()
    return out


@torch.library.custom_op("maxact_test::linear", mutates_args=())
def _opaque_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A linear layer Inductor cannot fuse into, as vLLM's are (cuBLAS on GPUs, oneDNN's
    weight-packed GEMM on the CPU build): its output is always written out."""
    return torch.nn.functional.linear(x, w)


@_opaque_linear.register_fake
def _(x, w):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


class _Linear(torch.nn.Linear):
    def forward(self, x):
        return _opaque_linear(x, self.weight)


class _ChainMLP(torch.nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.gate_up_proj = _Linear(h, 2 * h, bias=False)
        self.down = _Linear(h, h, bias=False)

    def forward(self, x):
        gu = self.gate_up_proj(x)
        return self.down(torch.nn.functional.silu(gu[..., : x.shape[-1]]) * gu[..., x.shape[-1]:])


class _ChainLayer(torch.nn.Module):
    """vLLM's Llama algebra: the stream grows by exactly the attention and MLP outputs, and the
    layer returns ``(mlp_out, stream + attn_out)`` not yet added; linear layers are extern
    kernels, norms and adds are Inductor's."""

    def __init__(self, h: int, scale: float) -> None:
        super().__init__()
        self.self_attn = _Linear(h, h, bias=False)
        self.self_attn.weight.data *= scale
        self.mlp = _ChainMLP(h)

    def forward(self, positions, hidden_states, residual):
        x = hidden_states if residual is None else hidden_states + residual
        r = x + self.self_attn(torch.nn.functional.rms_norm(x, (x.shape[-1],)))
        return self.mlp(torch.nn.functional.rms_norm(r, (r.shape[-1],))), r


class _ChainTop(torch.nn.Module):
    def __init__(self, h: int = 64, n: int = 3) -> None:
        super().__init__()
        self.config = type("Config", (), {"hidden_size": h})()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(_ChainLayer(h, 1.0 + 3 * i) for i in range(n))
        self.model.norm = torch.nn.Identity()

    def forward(self, x):
        residual = None
        for layer in self.model.layers:
            x, residual = layer(None, x, residual)
        return self.model.norm(x + residual)


@pytest.mark.parametrize("hot_path", HOT_PATHS)
def test_compiled_residual_sites_come_from_the_float32_chain(hot_path):
    """Compiled, the residual sites are the recorder's float32 chain (embedding, plus each
    layer's attention and MLP outputs, in the norms' order), never the stream the model keeps
    in registers: equal to a float32 recomputation of that chain, and the model's outputs are
    bit for bit those of the same model compiled without the recorder."""
    from vllm_maxact.adapters import Adapter
    from vllm_maxact.config import MaxActConfig
    from vllm_maxact.instrument import instrument

    class ChainAdapter(Adapter):
        residual_chain = True

    torch.manual_seed(7)
    plain = _ChainTop().eval().to(torch.bfloat16)
    inst = _ChainTop().eval().to(torch.bfloat16)
    inst.load_state_dict(plain.state_dict())
    rec = instrument(inst, MaxActConfig(hot_path=hot_path), torch.device("cpu"), adapter=ChainAdapter(), max_tokens=64)
    assert rec.chain.shape == (64, 64)
    xs = [(torch.randn(n, 64) * 3).to(torch.bfloat16) for n in (9, 33)]
    xs[1][30:] = 1e4  # padding rows: never recorded, never in the chain's values
    outs = _compiled_outputs(plain, xs)
    f_inst = torch.compile(inst, fullgraph=True, dynamic=True)
    want: dict[str, float] = {}
    with torch.no_grad():
        for x, valid, a in zip(xs, (9, 30), outs, strict=True):
            n = x.shape[0]
            rec.begin_step(valid)
            b = f_inst(x)
            rec.end_step()
            assert torch.equal(a.view(torch.int16), b.view(torch.int16)), n
            chain, h, res = x[:valid].float(), x, None
            for i, layer in enumerate(inst.model.layers):
                hid, r = layer(None, h, res)
                attn = layer.self_attn(torch.nn.functional.rms_norm(h if i == 0 else h + res, (64,)))
                chain = (chain + attn[:valid].float()) + hid[:valid].float()
                want[f"layers.{i}.residual"] = max(want.get(f"layers.{i}.residual", -1e9), float(chain.max()))
                h, res = hid, r
    win = rec.collect()
    for i, site in enumerate(rec.sites):
        if site.name in want:
            assert win.max[i] == pytest.approx(want[site.name], rel=2e-2), site.name
    assert win.tokens == 39
