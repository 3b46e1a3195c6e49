"""`vllm-maxact replay` with no sample selection, on the bundled SmolLM2-135M (CPU build), as a
newcomer runs it (with a short time budget and the test engines' sizes):

- the default sample: every built-in domain has rows, and each domain's token count is that of
  its first k default samples, cut at 512 tokens, for some k >= 1 (a lost, repeated or
  uncut sample, or a domain left out by the budget, breaks it); the whole-corpus rows, the
  Arrow metadata and the per-domain rows agree on tokens and samples;
- the global maximum and its site, as the summary prints them, are those of the Arrow file:
  SmolLM2's massive activation (above 1e4, in the residual stream after the first layers),
  reached in every domain;
- the summary ends with the next steps, among them the full corpus with an estimate of its time.
"""

from __future__ import annotations

import gc
import re

import pyarrow.feather as feather
import pytest
from click.testing import CliRunner
from conftest import TEST_MAX_BATCHED_TOKENS, TEST_MAX_SEQS

from vllm_maxact import corpus as C
from vllm_maxact.cli import QUICK_MAX_TOKENS, QUICK_PER_DOMAIN, main
from vllm_maxact.summary import global_max

pytestmark = pytest.mark.slow


def test_default_replay_every_domain_and_next_steps(smollm2_dir, smollm2_calibration, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)
    # The serving tests' calibration file and the test engines' sizes: the same compiled graph
    # as test_replay_engine's float32 engine (one compile per CI run).
    monkeypatch.setenv("VLLM_MAXACT_CALIBRATION", str(smollm2_calibration))
    args = ["replay", "--budget", "10", "--dtype", "float32", "--max-model-len", "1024",
            "--engine-arg", f"max_num_batched_tokens={TEST_MAX_BATCHED_TOKENS}",
            "--engine-arg", f"max_num_seqs={TEST_MAX_SEQS}"]
    r = CliRunner().invoke(main, args)
    gc.collect()  # the CLI's engine goes with its last reference
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = tmp_path / "maxact-smollm2-135m.arrow"
    table = feather.read_table(out)
    rows = table.to_pylist()

    # The default sample, as the test computes it: per domain, in corpus order, cut at 512.
    builtin = C.load_corpus("builtin")
    chosen = C.stratified(builtin, QUICK_PER_DOMAIN, seed=0)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    lengths: dict[str, list[int]] = {}
    for s in chosen:
        lengths.setdefault(s.domain, []).append(min(len(tok(s.text).input_ids), QUICK_MAX_TOKENS))
    assert set(lengths) == {s.domain for s in builtin} and len(lengths) == 8

    site_tokens: dict[str | None, set[int]] = {}
    for row in rows:
        site_tokens.setdefault(row["domain"], set()).add(row["tokens"])
    assert set(site_tokens) == {None, *lengths}, "every domain has rows"
    assert all(len(v) == 1 for v in site_tokens.values()), "every site of a domain saw the same tokens"
    replayed = 0
    for domain, lens in lengths.items():
        got = site_tokens[domain].pop()
        prefixes = [sum(lens[:k]) for k in range(1, len(lens) + 1)]
        assert got in prefixes, f"{domain}: {got} tokens is not its first k samples' {prefixes}"
        replayed += prefixes.index(got) + 1
    whole = site_tokens[None].pop()
    meta = table.schema.metadata
    assert whole == int(meta[b"vllm_maxact.tokens"]) == sum(
        r["tokens"] for r in rows if r["domain"] is not None and r["site"] == "embedding")
    assert int(meta[b"vllm_maxact.samples"]) == replayed
    assert int(meta[b"vllm_maxact.samples_planned"]) == len(chosen) == 8 * QUICK_PER_DOMAIN

    # The global max and its site: the summary's are the file's, and they are SmolLM2's.
    m, site = global_max(table)
    assert m > 1e4 and re.fullmatch(r"layers\.([1-9]|[12][0-9])\.(residual|mlp_out)", site), (m, site)
    assert f"{m:,.1f} at {site}" in r.output
    for domain in lengths:
        dom = [x["absmax"] for x in rows if x["domain"] == domain and x["kind"] in ("residual", "mlp_out")]
        assert 1e4 < max(dom) <= m, domain

    # One screen, ending with commands to paste.
    text = r.output[r.output.index("activation ranges"):]
    assert len(text.strip().splitlines()) <= 40, text
    tail = text.strip().splitlines()[-6:]
    assert tail[0] == "Next:"
    assert tail[1].split("#")[0].strip() == f"vllm-maxact report {out.name}"
    assert any(line.strip().startswith("vllm-maxact scales ") for line in tail)
    assert any(line.strip().startswith("vllm-maxact compare ") for line in tail)
    full = re.search(r"vllm-maxact replay --full +# the whole corpus: 520 samples, [\d,]+ tokens, about (\d+) (s|min|h)",
                     tail[-1])
    assert full, tail[-1]
