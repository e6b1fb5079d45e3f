"""Vision quality benchmark (issue 15, evaluations 1 and 2): Fashion-MNIST test accuracy of the
models trained by the pipeline's own presets, beside their training cost.

1. Fashion-MNIST classification: Vim (``longstream vision train --preset release``) and the
   DeiT-tiny-style timm ViT with the same stem, patch, width, depth and step budget
   (``--preset vit-release``).
2. Sequential-pixel Fashion-MNIST (784 tokens, one per pixel): causal Mamba
   (``--preset seqpix-mamba``) and S4D (``--preset seqpix-s4d``).

Every model is evaluated here on the 10,000 test images (``evaluate.evaluate``); its training
cost is read from the run's ``metrics.jsonl`` (steps, images seen, wall time) and its training
throughput (forward + backward + AdamW step, images/s and tokens/s on ``--threads`` threads) is
measured here, the models interleaved in this process (``timing.interleaved``), so the
projected time to a target accuracy can be read off. Writes
``benchmarks/results/vision_quality.json`` and ``.md``.

    python benchmarks/vision.py --quality --run vim=runs/vision/release --run vit=runs/vision/vit-release \\
        --run seqpix-mamba=runs/vision/seqpix-mamba --run seqpix-s4d=runs/vision/seqpix-s4d
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_name, interleaved  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Published numbers quoted beside ours (not reproduced here).
CLAIMS = [
    "Vim-Ti 76.1% / Vim-S 80.5% ImageNet-1k top-1 vs DeiT-Ti 72.2% / DeiT-S 79.8% (Zhu et al. 2024, Table 1)",
    "Fashion-MNIST paper (Xiao et al. 2017): best scikit-learn classifier of its benchmark 89.7% (an SVC)",
    "sequential-pixel MNIST / CIFAR are standard long-range tasks for S4 / S4D (Gu et al. 2022); "
    "no published sequential Fashion-MNIST number is claimed here",
]


def _train_log(run: Path) -> dict:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return {}
    recs = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    t = [r["time"] for r in recs if "time" in r]
    vals = [(r["step"], r["val_accuracy"]) for r in recs if "val_accuracy" in r]
    return {"wall_s": round(t[-1] - t[0], 1) if len(t) > 1 else None, "val_curve": vals,
            "last_loss": next((r["loss"] for r in reversed(recs) if "loss" in r), None)}


def _throughput_fns(models: dict, batch: int) -> dict:
    fns = {}
    for name, m in models.items():
        cfg = m.cfg
        s = cfg.data.img_size
        x = torch.randn(batch, cfg.data.in_chans, s, s)
        y = torch.randint(0, len(cfg.data.class_names), (batch,))
        mm = type(m)(cfg)  # a fresh copy: the benchmark never updates the evaluated weights
        mm.load_state_dict(m.state_dict())
        mm.train()
        opt = torch.optim.AdamW(mm.parameters(), lr=1e-4)

        def step(mm=mm, x=x, y=y, opt=opt):
            loss = torch.nn.functional.cross_entropy(mm(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        fns[name] = step
    return fns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                    help="a trained run dir (or hub name) to evaluate, e.g. vim=runs/vision/release")
    ap.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default $LONGSTREAM_DATA/vision/fashion-mnist)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32, help="batch of the throughput measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "vision_quality"))
    ap.add_argument("--recorded", action="store_true",
                    help="take the test metrics recorded in each checkpoint's config.json (computed by the same "
                         "evaluate code at the end of training) instead of evaluating again")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of the existing results whose names this run does not measure (marked "
                         "as earlier runs, with the load and date of the run that measured them)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from longstream.pipelines.common import dumps_strict
    from longstream.pipelines.vision.evaluate import evaluate
    from longstream.pipelines.vision.model import from_pretrained

    load0 = os.getloadavg()
    rows, models = [], {}
    for spec in args.run:
        name, _, where = spec.partition("=")
        if not where:
            ap.error(f"--run {spec!r}: expected NAME=DIR")
        m = from_pretrained(where)
        t0 = time.perf_counter()
        metrics = (json.loads(Path(where, "config.json").read_text())["metrics"] if args.recorded
                    else evaluate(where, args.data))
        eval_s = None if args.recorded else round(time.perf_counter() - t0, 2)
        models[name] = m
        cfg = m.cfg
        meta = json.loads((Path(where) / "config.json").read_text()) if Path(where, "config.json").is_file() else {}
        tokens = (cfg.data.img_size ** 2 if cfg.model.kind == "seqpix"
                  else (cfg.data.img_size // cfg.model.patch_size) ** 2)
        rows.append({
            "name": name, "checkpoint": where, "kind": cfg.model.kind, "preset": meta.get("preset"),
            "d_model": cfg.backbone.d_model, "n_layers": cfg.backbone.n_layers,
            "pattern": cfg.backbone.pattern if cfg.model.kind != "vit" else "timm ViT",
            "tokens": tokens, "params": sum(p.numel() for p in m.parameters()),
            "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
            "images_seen": cfg.train.steps * cfg.train.batch_size,
            "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
            "n_test": metrics["n_test"], "eval_s": eval_s, "metrics_source": "recorded" if args.recorded else "evaluated",
            **_train_log(Path(where)),
        })
    timing = interleaved(_throughput_fns(models, args.batch), args.repeats) if models else {}
    for r in rows:
        t = statistics.median(timing[r["name"]]["times_s"])
        r["train_images_per_s"] = round(args.batch / t, 2)
        r["train_tokens_per_s"] = round(args.batch * r["tokens"] / t, 1)
        r["epoch_minutes_at_measured_rate"] = round(60_000 / (args.batch / t) / 60, 1)
    out = Path(args.out)
    if args.append and out.with_suffix(".json").is_file():
        prev = json.loads(out.with_suffix(".json").read_text())
        mine = {r["name"] for r in rows}
        kept = [{**r, "earlier_run": r.get("earlier_run") or {"loadavg": prev.get("loadavg_before"),
                                                              "date": prev.get("date")}}
                for r in prev.get("results", []) if r["name"] not in mine]
        rows = kept + rows
    report = {"benchmark": "vision_quality", "cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
              "results": rows, "claims": CLAIMS}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(dumps_strict(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(report))
    print(render(report))
    return 0


def render(rep: dict) -> str:
    lines = ["# Vision quality (Fashion-MNIST test set)",
             "", f"CPU {rep['cpu']}, {rep['threads']} thread(s), torch {rep['torch']}, load average "
             f"{rep['loadavg_before'][0]:.1f} -> {rep['loadavg_after'][0]:.1f} (shared machine).", "",
             "| model | kind | d x layers | tokens | params | steps x batch | train wall | test images | test acc "
             "| macro-F1 | train img/s | train tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["results"]:
        wall = f"{r['wall_s'] / 60:.0f} min" if r.get("wall_s") else "-"
        mark = " (earlier run)" if r.get("earlier_run") else ""
        lines.append(f"| {r['name']}{mark} | {r['kind']} ({r['pattern']}) | {r['d_model']} x {r['n_layers']} | {r['tokens']} "
                     f"| {r['params'] / 1e6:.2f}M | {r['steps']} x {r['batch_size']} | {wall} | {r['n_test']} | "
                     f"{r['test_accuracy']:.2%} | {r['test_macro_f1']:.4f} | {r['train_images_per_s']} "
                     f"| {r['train_tokens_per_s']:.0f} |")
    if any(r.get("earlier_run") for r in rep["results"]):
        lines += ["", "Rows marked *earlier run* were kept from a previous run of this benchmark (`--append`): "
                  "their throughput was measured then, on the same machine at another load."]
    lines += ["", "Published claims quoted for context:", ""] + [f"- {c}" for c in rep["claims"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
