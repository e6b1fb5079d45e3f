"""Training-run safety for every registered pipeline (generated from the registry, like test_contract).

(a) training again into a finished run dir without ``--resume`` exits 2 naming the dir and
    leaves it byte-for-byte unchanged; ``--overwrite`` replaces it with a fresh log;
(b) ``--resume`` with another config exits 2 with the diff, the train state untouched;
(c) a resumed run says "resuming DIR from step N of M" on stderr and its ``metrics.jsonl``
    equals an uninterrupted run's (records written after the saved state are dropped);
(d) a diverging run (``--train.lr 1e30``) exits 2 with "training diverged at step N", writes
    no checkpoint, and any ``train_state.pt`` it leaves holds finite weights;
(e) non-finite final metrics are never saved into a checkpoint (the shared frame, once).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from longstream.backbones.io import save_weights_dir
from longstream.pipelines.common import TrainRun, UserError, optimizer_step
from longstream.pipelines.registry import PIPELINES, get_pipeline
from pin_losses import logged_losses, train_tiny  # tests/pin_losses.py

DOMAINS = list(PIPELINES)


def _cli(domain: str, argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run ``longstream <domain> train --preset tiny --quiet ARGV`` in-process: (exit code, stderr lines)."""
    torch.set_num_threads(1)
    rc = get_pipeline(domain, "cli").main(["train", "--preset", "tiny", "--quiet", *argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


def _errors(err: list[str]) -> list[str]:
    return [ln for ln in err if ln.startswith("error:")]


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _pause_at(domain: str) -> int:
    cfg = get_pipeline(domain, "config").PRESETS["tiny"]()
    return getattr(cfg.train, "save_every", 0) or 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """domain -> dir of one uninterrupted tiny run (cached per module; copy before changing it)."""
    cache: dict[str, Path] = {}

    def get(domain: str) -> Path:
        if domain not in cache:
            out = tmp_path_factory.mktemp(f"safety-{domain}") / "tiny"
            train_tiny(domain, out)
            cache[domain] = out
        return cache[domain]

    return get


# ---------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("domain", DOMAINS)
def test_training_into_a_finished_run_is_refused_unless_overwrite(domain, finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished(domain), out)
    before = _snapshot(out)
    rc, err = _cli(domain, ["--out", str(out)], capsys)
    assert rc == 2, f"{domain}: training into a finished run dir must exit 2, got {rc}: {err}"
    assert len(err) == 1 and err[0].startswith("error:"), f"{domain}: want one error line, got {err}"
    assert str(out) in err[0] and "holds a finished run" in err[0] and "--overwrite" in err[0], err[0]
    assert _snapshot(out) == before, f"{domain}: a refused run changed {out}"

    (out / "metrics.jsonl").write_text(json.dumps({"step": 999, "loss": 7.0}) + "\n")  # marks the old log
    rc, err = _cli(domain, ["--out", str(out), "--overwrite"], capsys)
    assert rc == 0, f"{domain}: --overwrite must replace the finished run: {err}"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("step") != 999 for r in recs), f"{domain}: --overwrite appended to the old metrics.jsonl"
    assert logged_losses(out) == logged_losses(finished(domain)), f"{domain}: the fresh log differs from a first run"
    assert not (out / "train_state.pt").exists()
    assert json.loads((out / "config.json").read_text())["files"]["model.safetensors"]["sha256"]


# ---------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("domain", DOMAINS)
def test_resume_with_a_different_config_is_refused_with_the_diff(domain, tmp_path, capsys):
    out = tmp_path / "run"
    paused = train_tiny(domain, out, max_steps_this_run=_pause_at(domain))
    assert paused.get("status") == "paused", paused
    lr = get_pipeline(domain, "config").PRESETS["tiny"]().train.lr
    state = (out / "train_state.pt").read_bytes()
    rc, err = _cli(domain, ["--out", str(out), "--resume", "--train.lr", repr(lr * 3)], capsys)
    assert rc == 2, f"{domain}: --resume with another --train.lr must exit 2, got {rc}: {err}"
    assert len(_errors(err)) == 1, err
    msg = _errors(err)[0]
    assert f"the run in {out} was made with a different config (diff: train.lr {lr!r} -> {lr * 3!r}" in msg, msg
    assert "drop --resume or use a new --out" in msg, msg
    assert (out / "train_state.pt").read_bytes() == state, f"{domain}: a refused resume changed the train state"
    assert not (out / "model.safetensors").exists()

    # fields that do not change what is computed may differ (threads, device, save_every)
    rc, err = _cli(domain, ["--out", str(out), "--resume", "--train.threads", "1"], capsys)
    assert rc == 0, f"{domain}: --resume with only --train.threads changed must work: {err}"


# ---------------------------------------------------------------------------- (c)
@pytest.mark.parametrize("domain", DOMAINS)
def test_resumed_run_says_so_and_logs_what_an_uninterrupted_run_logs(domain, finished, tmp_path, capsys):
    out, pause_at = tmp_path / "run", _pause_at(domain)
    train_tiny(domain, out, max_steps_this_run=pause_at)
    total = len(logged_losses(finished(domain)))
    with open(out / "metrics.jsonl", "a") as f:  # logged after the last save, then the process died
        f.write(json.dumps({"step": pause_at + 1, "loss": 123.0}) + "\n")
    rc, err = _cli(domain, ["--out", str(out), "--resume"], capsys)
    assert rc == 0, f"{domain}: resume failed: {err}"
    said = [ln for ln in err if ln.startswith(f"resuming {out} from step {pause_at} of ")]
    assert said, f"{domain}: a resumed run must say 'resuming {out} from step {pause_at} of N' on stderr: {err}"
    got, want = logged_losses(out), logged_losses(finished(domain))
    assert got == want, f"{domain}: resumed log {got} != uninterrupted {want} ({total} records)"


# ---------------------------------------------------------------------------- (d)
@pytest.mark.parametrize("domain", DOMAINS)
def test_diverging_run_stops_with_a_clear_error_and_keeps_a_finite_state(domain, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _cli(domain, ["--out", str(out), "--train.lr", "1e30", "--train.save_every", "1"], capsys)
    assert rc == 2, f"{domain}: a diverging run must exit 2, got {rc}: {err}"
    assert len(err) == 1 and err[0].startswith("error: training diverged at step "), err
    assert "--train.lr" in err[0], err[0]
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists(), (
        f"{domain}: a diverged run wrote a checkpoint"
    )
    state_path = out / "train_state.pt"
    if state_path.exists():
        assert f"the last good state is {state_path}" in err[0], err[0]
        state = torch.load(state_path, weights_only=True)
        bad = [k for k, t in state["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
        assert not bad, f"{domain}: train_state.pt holds non-finite weights {bad[:3]}"
    for rec in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()) if (
            out / "metrics.jsonl").exists() else []:
        assert all(v is None or not isinstance(v, float) or v == v for v in rec.values()), rec


# ---------------------------------------------------------------------------- (e): the shared frame
def _toy(out: Path, *, metric: float, loss_at: dict[int, float] | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    with TrainRun(out, total_steps=4, save_every=2, config={"train": {"lr": 0.1}}) as run:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        run.restore(model=model, optimizer=opt)
        for step in run.steps():
            loss = model(torch.ones(1, 2)).pow(2).sum() * (loss_at or {}).get(step + 1, 1.0)
            optimizer_step(loss, opt, model=model)
            run.log.log(step + 1, loss=loss.item())
            run.checkpoint(step + 1, model=model, optimizer=opt)
        save_weights_dir(out, model.state_dict(), {"metrics": {"mse": metric}}, keep_existing=True)
        run.finish()
    return {}


def test_non_finite_loss_or_final_metrics_are_never_saved(tmp_path):
    with pytest.raises(UserError, match=r"training diverged at step 3 \(loss nan\); the last good state is "
                                        r".*train_state.pt \(step 2\), kept"):
        _toy(tmp_path / "a", metric=1.0, loss_at={3: float("nan")})
    assert torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)["step"] == 2
    with pytest.raises(UserError, match=r"non-finite final metrics \(metrics.mse nan\); no checkpoint was written"):
        _toy(tmp_path / "b", metric=float("nan"))
    assert not (tmp_path / "b" / "model.safetensors").exists()
    assert (tmp_path / "b" / "train_state.pt").exists()  # the last good state stays
