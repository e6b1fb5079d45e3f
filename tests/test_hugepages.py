"""Decode weights on transparent huge pages: same Parameter objects and values, 2 MB aligned
storage, training / saving unaffected, and the off switch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from longstream.backbones import hugepages
from longstream.backbones.config import BackboneConfig
from longstream.backbones.lm import LanguageModel

linux = pytest.mark.skipif(not hugepages.enabled(), reason="needs Linux with MADV_HUGEPAGE")


@linux
def test_hugepage_copy_is_aligned_equal_and_marked():
    t = torch.randn(700, 1024)
    h = hugepages.hugepage_copy(t)
    assert h.data_ptr() % (2 << 20) == 0 and torch.equal(h, t) and h.data_ptr() != t.data_ptr()
    assert hugepages.on_hugepage_mapping(h) and not hugepages.on_hugepage_mapping(t)
    h.add_(1.0)  # writable, private to this tensor
    assert torch.equal(h, t + 1.0)


def _lm() -> LanguageModel:
    torch.manual_seed(0)
    cfg = BackboneConfig(d_model=384, n_layers=2, pattern="M", mixer_kwargs={"M": {"d_state": 16}})
    return LanguageModel(3000, cfg)  # embedding / head 4.6 MB, in_proj 2.4 MB: above MIN_BYTES


@linux
def test_move_keeps_parameters_values_and_training():
    lm = _lm()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    params = list(lm.parameters())
    big = [p for p in params if p.numel() * 4 >= hugepages.MIN_BYTES]
    assert len(big) >= 3
    moved = hugepages.move_to_hugepages(lm)
    assert moved == sum(p.numel() * 4 for p in big)
    assert list(lm.parameters()) == params  # the same objects
    assert all(hugepages.on_hugepage_mapping(p.data) and p.data_ptr() % (2 << 20) == 0 for p in big)
    assert lm.lm_head.weight is lm.embedding.weight  # still tied
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())
    assert hugepages.move_to_hugepages(lm) == 0  # idempotent
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    ids = torch.randint(0, 3000, (2, 16))
    logits = lm(ids)
    logits = logits[0] if isinstance(logits, tuple) else logits
    loss = logits.logsumexp(-1).mean()
    loss.backward()
    opt.step()
    assert not torch.equal(lm.embedding.weight, before["embedding.weight"])


@linux
def test_first_decode_step_moves_weights_and_matches(monkeypatch):
    lm = _lm().eval()
    ref = _lm().eval()
    monkeypatch.setenv("LONGSTREAM_HUGEPAGES", "0")
    tok = torch.tensor([5, 9])
    with torch.no_grad():
        y_ref, _ = ref.step(tok, ref.init_state(2))
    assert not hugepages.on_hugepage_mapping(ref.embedding.weight.data)  # switched off
    monkeypatch.setenv("LONGSTREAM_HUGEPAGES", "1")
    with torch.no_grad():
        y, _ = lm.step(tok, lm.init_state(2))
    from longstream.backbones.ops import cpu_kernels

    if cpu_kernels.has_op("lm_step"):
        assert hugepages.on_hugepage_mapping(lm.embedding.weight.data)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def test_disabled_off_linux_or_by_env(monkeypatch):
    monkeypatch.setenv("LONGSTREAM_HUGEPAGES", "0")
    t = torch.randn(600, 1024)
    assert hugepages.hugepage_copy(t) is t
    assert hugepages.move_to_hugepages(torch.nn.Linear(1024, 1024)) == 0
    monkeypatch.setenv("LONGSTREAM_HUGEPAGES", "1")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not hugepages.enabled()



_FAULT_PROBE = (
    "import os, longstream, torch\n"
    "def faults(): return int(open('/proc/self/stat').read().split()[9])\n"  # minor page faults
    "f = faults(); t = torch.empty(16 * 2**20); t.fill_(1.0)\n"  # a fresh 64 MB block, touched
    "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), faults() - f)\n"
)


def _thp_mode() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""


@linux
@pytest.mark.skipif("[never]" in _thp_mode() or not _thp_mode(), reason="transparent huge pages are off")
@pytest.mark.parametrize("thp", ["1", "0"])
def test_import_turns_on_huge_page_allocations(thp):
    """``import longstream`` sets THP_MEM_ALLOC_ENABLE, so PyTorch backs large blocks with 2 MB pages:
    touching a fresh 64 MB tensor faults a few hundred times instead of once per 4 KB page
    (16,384); LONGSTREAM_THP=0 leaves torch's allocator alone."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["LONGSTREAM_THP"] = thp
    out = subprocess.run([sys.executable, "-c", _FAULT_PROBE], env=env, capture_output=True, text=True, check=True)
    flag, faults = out.stdout.split()
    if thp == "1":
        assert flag == "1" and int(faults) < 4000, out.stdout
    else:
        assert flag == "None" and int(faults) > 16000, out.stdout
