"""The shared training frame (``pipelines/common/loop.py``) and the schedules in ``optim.py``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from longstream.pipelines.common import (
    TrainRun,
    UserError,
    data_fingerprint,
    make_epoch_scheduler,
    make_scheduler,
    optimizer_step,
    param_groups,
    tslib_lr,
)


def _toy_train(out_dir, *, steps=9, save_every=4, max_steps=0, resume=False):
    """A complete little loop on TrainRun: returns (result, final weights)."""
    with TrainRun(out_dir, resume=resume, total_steps=steps, save_every=save_every,
                  max_steps_this_run=max_steps) as run:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
        sched = make_scheduler(opt, steps, 2)
        run.restore(model=model, optimizer=opt, scheduler=sched)
        for step in run.steps():
            g = torch.Generator().manual_seed(step)
            x = torch.randn(16, 4, generator=g)
            loss = (model(x).squeeze(-1) - x.sum(-1)).pow(2).mean()  # dropout draws from the global RNG
            optimizer_step(loss, opt, model=model, scheduler=sched, grad_clip=1.0)
            run.log.log(step + 1, loss=loss.item())
            run.checkpoint(step + 1, model=model, optimizer=opt, scheduler=sched)
        paused = run.pause(model=model, optimizer=opt, scheduler=sched)
        if paused:
            return paused, None
        (out_dir / "config.json").write_text("{}")
        run.finish()
        return {"status": "done"}, [p.detach().clone() for p in model.parameters()]


def test_pause_resume_is_bit_identical_and_logs_losses(tmp_path):
    _, full = _toy_train(tmp_path / "a")
    res, _ = _toy_train(tmp_path / "b", max_steps=5)
    assert res == {"status": "paused", "step": 5, "resume": f"train --out {tmp_path / 'b'} --resume"}
    assert (tmp_path / "b" / "train_state.pt").exists()
    res, again = _toy_train(tmp_path / "b", resume=True)
    assert res["status"] == "done" and not (tmp_path / "b" / "train_state.pt").exists()
    assert all(torch.equal(p, q) for p, q in zip(full, again))

    def losses(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())]

    assert losses("a") == losses("b") and [s for s, _ in losses("a")] == list(range(1, 10))


def test_nothing_to_resume_and_fresh_runs_drop_stale_state(tmp_path):
    with pytest.raises(UserError, match="no train_state.pt"):
        _toy_train(tmp_path / "new", resume=True)
    _toy_train(tmp_path / "done")
    with pytest.raises(UserError, match="already finished"):
        _toy_train(tmp_path / "done", resume=True)
    _toy_train(tmp_path / "c", max_steps=5)
    (tmp_path / "c" / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    _toy_train(tmp_path / "c", max_steps=2)  # fresh: the old state and log are gone
    recs = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert torch.load(tmp_path / "c" / "train_state.pt", weights_only=True)["step"] == 2


def test_param_groups_skip_vectors_and_apply_lr_mult():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    m.register_parameter("A_log", nn.Parameter(torch.zeros(4, 2)))
    m.A_log._no_weight_decay = True
    decay, keep = param_groups(m, 0.5)
    assert [p.shape for p in decay["params"]] == [(4, 3)] and decay["weight_decay"] == 0.5
    assert len(keep["params"]) == 4 and keep["weight_decay"] == 0.0
    groups = param_groups(m, 0.5, lr=1e-3, lr_mult={"1.": 10.0})
    by = {(g["lr_mult"], g["weight_decay"]): len(g["params"]) for g in groups}
    assert by == {(1.0, 0.5): 1, (1.0, 0.0): 2, (10.0, 0.0): 2}
    assert {g["lr"] for g in groups} == {1e-3, 1e-2}


def test_tslib_schedules():
    assert [tslib_lr("type1", e) for e in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert [round(tslib_lr("type3", e), 6) for e in range(6)] == [1.0, 1.0, 1.0, 0.9, 0.81, 0.729]
    assert tslib_lr("cosine", 0, 5, 10) == pytest.approx(0.5) and tslib_lr("constant", 7) == 1.0
    with pytest.raises(UserError, match="lradj"):
        tslib_lr("type9", 0)
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = make_epoch_scheduler(opt, "type1", steps_per_epoch=3, epochs=3)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2] * 3 + [0.1] * 3 + [0.05] * 3)
    assert not math.isnan(lrs[-1])


def test_data_fingerprint_depends_on_every_array():
    a, b = torch.arange(6).view(2, 3), torch.ones(3)
    fp = data_fingerprint(a, b)
    assert fp == data_fingerprint(a.numpy(), b.clone()) and len(fp) == 64
    assert fp != data_fingerprint(a, b * 2) and fp != data_fingerprint(a)
