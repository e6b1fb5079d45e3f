"""pipelines/common.py: overrides, schedules, early stopping, logging, train state, save/load_pretrained."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch
from torch import nn

from longstream.pipelines import common
from longstream.pipelines.common import UserError


@dataclass
class _Opt:
    steps: int = 3
    lr: float = 1e-3
    name: str | None = None
    flag: bool = False
    kind: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class _Cfg:
    train: _Opt = field(default_factory=_Opt)
    extra: dict = field(default_factory=dict)
    tag: str = "x"


def test_overrides_typed_and_nested():
    cfg = common.apply_overrides(
        _Cfg(),
        ["--train.steps", "10", "--train.lr=3e-4", "--train.name", "none", "--train.flag", "yes",
         "--train.kind", "b", "--train.sizes", "4,5,6", "--extra.k", "7", "--tag", "y"],
    )
    assert cfg.train == _Opt(steps=10, lr=3e-4, name=None, flag=True, kind="b", sizes=[4, 5, 6])
    assert cfg.extra == {"k": 7} and cfg.tag == "y"
    # original untouched (presets must stay fresh)
    assert _Cfg().train.steps == 3


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--train.stepz", "1"], "valid here: train.steps"),
        (["--nope", "1"], "unknown option --nope"),
        (["--train.steps", "ten"], "expects int"),
        (["--train.flag", "maybe"], "true/false"),
        (["--train.kind", "c"], "must be one of"),
        (["--train", "1"], "is a section"),
        (["--train.steps"], "needs a value"),
        (["steps"], "unexpected argument"),
    ],
)
def test_overrides_errors(args, needle):
    with pytest.raises(UserError, match=needle):
        common.apply_overrides(_Cfg(), args)


def test_config_roundtrip_nested():
    cfg = common.apply_overrides(_Cfg(), {"train.steps": "9"})
    d = json.loads(json.dumps(common.config_to_dict(cfg)))
    assert common.config_from_dict(_Cfg, d) == cfg
    d["unknown"] = 1  # old/new fields are tolerated unless strict
    assert common.config_from_dict(_Cfg, d) == cfg
    with pytest.raises(UserError):
        common.config_from_dict(_Cfg, d, strict=True)


def test_warmup_cosine_shape():
    lrs = [common.warmup_cosine(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sch = common.make_scheduler(opt, 100, 10, 0.1)
    for _ in range(10):
        opt.step()
        sch.step()
    assert sch.get_last_lr()[0] == pytest.approx(2.0)


def test_early_stopping():
    es = common.EarlyStopping(patience=2, mode="min", min_delta=0.01)
    assert [es.step(v) for v in (1.0, 0.9, 0.895, 0.91, 0.5)] == [False, False, False, True, False]
    es2 = common.EarlyStopping(patience=1, mode="max")
    es2.load_state_dict(es.state_dict())
    assert es2.best == es.best


def test_metric_logger(tmp_path):
    log = common.MetricLogger(tmp_path / "m" / "metrics.jsonl")
    log.log(1, loss=torch.tensor(0.5))
    log.log(2, loss=0.25, acc=1.0)
    rows = common.MetricLogger.read(tmp_path / "m" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] == 0.5 and rows[1]["acc"] == 1.0
    common.MetricLogger(tmp_path / "r1.jsonl", rank=1).log(1, x=1)
    assert not (tmp_path / "r1.jsonl").exists()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _steps(model, opt, sch, n):
    for _ in range(n):
        x = torch.randn(5, 4)
        loss = model(x).pow(2).mean() + torch.rand(()) * 0  # consumes RNG
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()


def test_train_state_resume_is_exact(tmp_path):
    common.seed_everything(1)
    m1 = _net()
    o1 = torch.optim.AdamW(m1.parameters(), lr=1e-2)
    s1 = common.make_scheduler(o1, 20, 2)
    _steps(m1, o1, s1, 10)
    common.seed_everything(1)
    m2 = _net()
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    _steps(m2, o2, common.make_scheduler(o2, 20, 2), 4)
    py_next = random.random()  # what the RNG gives right after step 4
    path = tmp_path / "state.pt"
    # the same 4 steps again, saved to disk, then resumed in fresh objects
    common.seed_everything(1)
    m2b = _net()
    o2b = torch.optim.AdamW(m2b.parameters(), lr=1e-2)
    s2b = common.make_scheduler(o2b, 20, 2)
    _steps(m2b, o2b, s2b, 4)
    common.save_train_state(path, model=m2b, optimizer=o2b, scheduler=s2b, step=4, extra={"best": 0.5})
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp left
    m3 = _net()
    o3 = torch.optim.AdamW(m3.parameters(), lr=1e-2)
    s3 = common.make_scheduler(o3, 20, 2)
    torch.manual_seed(999)  # clobber RNG; load must restore it
    step, extra = common.load_train_state(path, model=m3, optimizer=o3, scheduler=s3)
    assert step == 4 and extra == {"best": 0.5}
    assert random.random() == py_next
    _steps(m3, o3, s3, 6)
    for a, b in zip(m1.parameters(), m3.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert s3.get_last_lr() == s1.get_last_lr()


def test_train_state_errors(tmp_path):
    with pytest.raises(UserError, match="drop --resume"):
        common.load_train_state(tmp_path / "none.pt", model=_net())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable"):
        common.load_train_state(bad, model=_net())


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_save_load_pretrained_roundtrip(tmp_path):
    m = _Tied()
    out = common.save_pretrained(m, _Cfg(), tmp_path / "ck", pipeline="demo", preset="tiny", task="t",
                                 metrics={"acc": 0.5}, data={"name": "gen", "sha256": "0" * 64})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    for key in ("pipeline", "preset", "backbone", "metrics", "data", "code_version", "files"):
        assert key in meta
    assert meta["files"]["model.safetensors"]["sha256"] == common.sha256_file(out / "model.safetensors")
    sd, meta2, d = common.load_pretrained(out, pipeline="demo")
    m2 = _Tied()
    m2.load_state_dict(sd)
    torch.testing.assert_close(m2.head.weight, m.emb.weight)
    assert common.config_from_dict(_Cfg, meta2["config"]) == _Cfg()
    # saving again over it keeps side files and leaves no temp dirs
    (out / "metrics.jsonl").write_text("{}\n")
    common.save_pretrained(m, _Cfg(), out, pipeline="demo")
    assert (out / "metrics.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_pretrained_detects_corruption_and_wrong_pipeline(tmp_path):
    out = common.save_pretrained(_net(), _Cfg(), tmp_path / "ck", pipeline="demo")
    with pytest.raises(UserError, match="belongs to pipeline 'demo'"):
        common.load_pretrained(out, pipeline="other")
    w = out / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        common.load_pretrained(out, pipeline="demo")
    (out / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        common.load_pretrained(out)
    with pytest.raises(UserError, match="not a checkpoint"):
        common.load_pretrained(tmp_path)


def test_shard_indices_and_distenv():
    env = common.DistEnv(rank=1, world_size=2)
    assert common.shard_indices(list(range(8)), env) == [4, 5, 6, 7]
    assert common.shard_indices(torch.arange(4), common.DistEnv()) == [0, 1, 2, 3]
    with pytest.raises(UserError, match="not divisible"):
        common.shard_indices(list(range(5)), env)
    assert common.all_reduce_mean(3.0, common.DistEnv()) == 3.0


TORCHRUN_VARS = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}


def test_launched_by_torchrun_reads_the_environment(monkeypatch):
    for k, v in TORCHRUN_VARS.items():
        monkeypatch.setenv(k, v)
    assert common.launched_by_torchrun() is True
    for k in TORCHRUN_VARS:  # any one missing: not a torchrun launch
        monkeypatch.delenv(k)
        assert common.launched_by_torchrun() is False, f"without {k} it is not a torchrun launch"
        monkeypatch.setenv(k, TORCHRUN_VARS[k])
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k)
    assert common.launched_by_torchrun() is False
    env = common.init_distributed("cpu")  # a plain process: one rank, nothing initialised
    assert (env.rank, env.world_size, env.is_main) == (0, 1, True)


def test_cli_guard_exit_codes(capsys):
    def bad():
        raise UserError("bad input x; fix it")

    def boom():
        raise RuntimeError("bug")

    assert common.run_cli_guarded(bad) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: bad input x; fix it"
    assert common.run_cli_guarded(boom) == 1
    assert "Traceback" in capsys.readouterr().err
    assert common.run_cli_guarded(lambda: None) == 0


def test_pickle_weights_are_not_a_checkpoint(tmp_path):
    out = common.save_pretrained(_net(), _Cfg(), tmp_path / "ck", pipeline="demo")
    (out / "model.safetensors").unlink()
    torch.save(_net().state_dict(), out / "pytorch_model.bin")  # a pickle: never loaded as our checkpoint
    with pytest.raises(UserError, match="model.safetensors is missing"):
        common.load_pretrained(out, pipeline="demo")


def test_pipeline_cli_lazy_callables(capsys, tmp_path):
    rc = common.run_pipeline_cli(
        ["evaluate", "--checkpoint", "x", "--json"], domain="demo", presets={"tiny": _Cfg},
        train="nowhere:train", evaluate="json:loads", predict="nowhere:predict",
    )
    assert rc == 1  # json.loads(checkpoint=..., data=...) is a TypeError: an internal failure
    rc = common.run_pipeline_cli(
        ["train", "--print-config", "--train.steps", "5"], domain="demo", presets={"tiny": _Cfg},
        train="nowhere:train", evaluate="nowhere:e", predict="nowhere:p",
    )
    assert rc == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train"]["steps"] == 5


def test_out_dir_guard(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match="already holds other files"):
        common.save_pretrained(_net(), _Cfg(), tmp_path, pipeline="demo")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "sub").rmdir()
    with pytest.raises(UserError, match="already holds other files"):
        common.check_out_dir(tmp_path)  # strict (before training): unknown files refused
    common.check_out_dir(tmp_path, strict=False)  # a pipeline's own side files are fine at save time
    with pytest.raises(UserError, match="current directory"):
        common.check_out_dir(".")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        common.check_out_dir(f)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    common.check_out_dir(run)  # a training run dir is fine
    ck = common.save_pretrained(_net(), _Cfg(), tmp_path / "ck", pipeline="demo")
    (ck / "eval.png").write_bytes(b"")  # extra files beside a checkpoint are fine
    common.save_pretrained(_net(), _Cfg(), ck, pipeline="demo")
    assert (ck / "eval.png").exists()


def test_load_weights_rejects_a_mismatched_checkpoint_with_one_user_error():
    import torch

    from longstream.pipelines.common import UserError, load_weights

    model = torch.nn.Linear(3, 2)
    ok = load_weights(model, {k: v.clone() for k, v in model.state_dict().items()}, "runs/x")
    assert ok is model and not model.training
    with pytest.raises(UserError, match=r"runs/y does not match the model .*missing \['bias'\].*unexpected \['extra'\]"):
        load_weights(model, {"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}, "runs/y", {"code_version": "0.0"})
