"""The genomics Gradio tab's handler: species, coding track with gene arrows, edit scores, page errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longstream.pipelines.common import UserError
from longstream.pipelines.genomics import config as C
from longstream.pipelines.genomics import demo
from longstream.pipelines.genomics.model import build_model


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-ckpt")
    torch.manual_seed(0)
    out = {}
    for task, fn in (("species", C.tiny), ("cds", C.tiny_cds), ("lm", C.tiny_lm)):
        build_model(fn()).save_pretrained(root / task, preset=task, metrics={})
        out[task] = str(root / task)
    return out


SEQ = "".join(np.random.default_rng(0).choice(list("ACGT"), 700))


def test_analyse_fills_every_panel(ck):
    edits = demo._example_edits(SEQ)
    text, probs, fig, rows = demo.analyse(SEQ.lower(), None, edits, ck)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and len(probs) == 4
    assert text.splitlines()[0].startswith(max(probs, key=probs.get)) and "700 bases" in text
    ax = fig.axes[0]
    assert len(ax.collections) >= 2 and ax.get_xlim() == (0, 700)  # the two strand tracks
    assert len(rows) == 3 and [r[0] for r in rows] == [100, 200, 300]
    assert all(r[3] == pytest.approx((r[4] + r[5]) / 2, abs=1e-3) for r in rows)


def test_gene_arrows_on_both_strands():
    seq = "ATG" + "GCT" * 60 + "TAA"  # one ORF on +, and its reverse complement on -
    from longstream.encoders.dna import reverse_complement

    full = "C" * 50 + seq + "C" * 50 + reverse_complement(seq) + "C" * 50
    probs = np.zeros((len(full), 3))
    probs[:, 0] = 1
    probs[50 : 50 + len(seq)] = [0, 1, 0]
    probs[100 + len(seq) : 100 + 2 * len(seq)] = [0, 0, 1]
    from longstream.pipelines.genomics.genes import decode_genes

    genes = decode_genes(probs, full)
    assert sorted(g.strand for g in genes) == [-1, 1]
    fig = demo.track_figure(probs, genes, [(10, "C", "A")])
    arrows = [p for p in fig.axes[0].patches]
    assert len(arrows) == 2
    ys = sorted(round(float(np.mean(a.get_xy()[:, 1])), 1) for a in arrows)
    assert ys[0] < 0 < ys[1]  # minus-strand gene below, plus-strand gene above


def test_page_errors_name_the_widget(ck):
    with pytest.raises(UserError, match="pasted sequence"):
        demo.analyse("ACGTACGT12XZACGTACGT", None, "", ck)
    with pytest.raises(UserError, match=r"edits \(POS:ALT\)"):
        demo.analyse(SEQ, None, "5000:A", ck)
    missing = {**ck, "lm": "genomics/no-such-lm"}
    text, _, _, rows = demo.analyse(SEQ, None, "10:A", missing)
    assert rows == [] and "no-such-lm is not installed" in text
