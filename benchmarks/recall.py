"""Recall benchmark -> ``benchmarks/results/recall.{json,md}``.

Collects, for the shipped recall checkpoints (``checkpoints/recall/*``):

1. MQAR (seq 256, 16 KV pairs, width 64): attention, Mamba/attention hybrid, pure Mamba.
2. Induction heads: Mamba trained at 256, accuracy up to 64x (16K).
3. Passkey: Mamba + block-retrieval memory vs Mamba + sink/window (StreamingLLM) baseline,
   trained at 512, accuracy on the length x depth grid up to 64x (32K).
4. Accuracy against streaming-state bytes for every checkpoint.
5. Peak memory while streaming 1M tokens through the memory-augmented passkey model:
   resident set size (VmRSS) and its high-water mark (VmHWM) at 64K, 256K and 1M tokens,
   measured in a fresh subprocess with one thread.

By default the metrics recorded in each checkpoint at the end of its training run (the
full evaluation grid of ``pipelines/recall/evaluate.py``) are used; ``--reeval`` re-runs
the evaluation here. Usage::

    python benchmarks/recall.py              # collect + RSS stream of 1M tokens
    python benchmarks/recall.py --reeval     # also re-evaluate every checkpoint
    python benchmarks/recall.py --rss-tokens 65536   # quicker RSS check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CKPT = ROOT / "checkpoints" / "recall"
OUT = ROOT / "benchmarks" / "results"

MQAR = [("attn-mqar", "attention (A x2, q/k/v bias)"), ("hybrid-mqar", "Mamba + attention (M,A)"), ("mamba-mqar", "Mamba (M x2)")]
PASSKEY = [("mamba-retrieval-passkey", "Mamba + block retrieval (InfLLM, per-query top-16 of 8-token blocks)"),
           ("mamba-sinkwindow-passkey", "same weights, sinks 4 + window 256 cache (StreamingLLM)")]
INDUCTION = [("mamba-induction", "Mamba (M x2)")]
NOT_SHIPPED: dict[str, str] = {}


def _rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB (Linux)."""
    rss = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def rss_worker(checkpoint: str, tokens: int, marks: list[int]) -> dict[str, Any]:
    """Stream ``tokens`` passkey tokens through ``checkpoint`` and record RSS at ``marks``."""
    import torch

    torch.set_num_threads(1)
    from longstream.pipelines.recall.data import generate
    from longstream.pipelines.recall.evaluate import eval_data
    from longstream.pipelines.recall.model import from_pretrained

    model = from_pretrained(checkpoint)
    cfg = model.cfg
    x, y = generate(eval_data(cfg), 1, seq_len=tokens, depth=0.05, seed=0)
    seg = cfg.model.segment_len or 4096
    r = model.runner(segment_len=seg, detach_every=1, progress=False, head=False)
    rec: dict[str, Any] = {"checkpoint": checkpoint, "tokens": tokens, "segment_len": seg, "marks": {}}
    rss0 = _rss_kib()
    rec["rss_start_kib"] = rss0[0]
    todo = sorted(m for m in marks if m <= tokens)
    t0 = time.time()
    pred = None
    with torch.no_grad():
        for s, h, st in r.iter(x):
            end = s + h.shape[1]
            if end == tokens:  # the answer positions: predict the passkey after 1M tokens
                sel = y[:, s:end] != -100
                pred = model.logits(h[sel]).argmax(-1).tolist()
            while todo and end >= todo[0]:
                rss, hwm = _rss_kib()
                rec["marks"][str(todo[0])] = {"rss_kib": rss, "hwm_kib": hwm, "state_bytes": st.nbytes(),
                                              "seconds": round(time.time() - t0, 1)}
                todo.pop(0)
    rec["target"] = y[y != -100].tolist()
    rec["prediction"] = pred
    rec["tokens_per_s"] = round(tokens / (time.time() - t0), 1)
    return rec


SINK_WINDOW = {"sinks": 4, "window": 256, "d_key": 16}  # the retrieval read head: d_key 16, one head


def derive_sink_window(src: Path, dst: Path) -> dict[str, Any]:
    """The StreamingLLM baseline: the retrieval model's weights with its block memory replaced by
    a sink + window cache (same backbone, same read head), evaluated on the same grid and saved."""
    from longstream.pipelines.recall.evaluate import evaluate_model
    from longstream.pipelines.recall.model import from_pretrained, with_memory

    model = with_memory(from_pretrained(str(src)), "sink_window", SINK_WINDOW)
    metrics = evaluate_model(model)
    card = (
        "# recall/mamba-sinkwindow-passkey\n\nStreamingLLM baseline for passkey retrieval: the weights of "
        f"`recall/{src.name}` (segment-local Mamba + read head) with the block-retrieval memory replaced by "
        f"attention sinks + a sliding window ({SINK_WINDOW}); no separate training. Made by "
        "`python benchmarks/recall.py --derive-baseline`.\n\nMetrics: see config.json.\n"
    )
    model.save_pretrained(dst, preset="passkey_sink_window", metrics=metrics, card=card,
                          data={"name": "generated:passkey", "derived_from": f"recall/{src.name}"})
    return metrics


def load_metrics(name: str, reeval: bool) -> dict[str, Any] | None:
    d = CKPT / name
    if not (d / "config.json").exists():
        return None
    meta = json.loads((d / "config.json").read_text())
    m = dict(meta.get("metrics", {}))
    if reeval:
        from longstream.pipelines.recall.evaluate import evaluate

        m.update(evaluate(str(d)))
    m["_config"] = meta["config"]
    return m


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reeval", action="store_true", help="re-run the evaluation grid of every checkpoint")
    ap.add_argument("--rss-tokens", type=int, default=1 << 20)
    ap.add_argument("--rss-checkpoint", default=str(CKPT / "mamba-retrieval-passkey"))
    ap.add_argument("--rss-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--derive-baseline", action="store_true",
                    help="(re)build recall/mamba-sinkwindow-passkey from the retrieval checkpoint")
    ap.add_argument("--rss-json", default=None,
                    help="reuse a previous --rss-worker measurement (JSON file) instead of streaming again")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    marks = [1 << 16, 1 << 18, 1 << 20]
    if args.rss_worker:
        print(json.dumps(rss_worker(args.rss_checkpoint, args.rss_tokens, marks)))
        return 0

    t0 = time.time()
    src, dst = CKPT / "mamba-retrieval-passkey", CKPT / "mamba-sinkwindow-passkey"
    if (src / "config.json").exists() and (args.derive_baseline or not (dst / "config.json").exists()):
        derive_sink_window(src, dst)
    res: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "command": "python benchmarks/recall.py" + (" --reeval" if args.reeval else "")
        + (f" --rss-json {args.rss_json}" if args.rss_json else "")
        + (" --derive-baseline" if args.derive_baseline else ""),
        "mqar": {}, "induction": {}, "passkey": {}, "state_vs_accuracy": [],
    }
    import torch

    res["machine"]["torch"] = torch.__version__
    groups = {"mqar": MQAR, "induction": INDUCTION, "passkey": PASSKEY}
    for group, items in groups.items():
        for name, label in items:
            m = load_metrics(name, args.reeval)
            if m is None:
                res[group][name] = {"label": label, "missing": True}
                continue
            cfgd = m.pop("_config")
            m["label"] = label
            m["vocab_size"] = cfgd["data"]["vocab_size"]
            m["steps_config"] = cfgd["train"]["steps"]
            res[group][name] = m
            res["state_vs_accuracy"].append({"checkpoint": f"recall/{name}", "task": m.get("task"),
                                             "accuracy": m.get("accuracy"), "state_bytes_1x": m.get("state_bytes_1x"),
                                             "longest_acc": m.get(f"acc_{max(_mults(m))}x") if _mults(m) else None,
                                             "state_bytes_longest": m.get("state_bytes")})

    rss = None
    if args.rss_json:
        rss = json.loads(Path(args.rss_json).read_text())
        rss["reused_from"] = args.rss_json
    elif (Path(args.rss_checkpoint) / "config.json").exists():
        cmd = [sys.executable, __file__, "--rss-worker", "--rss-tokens", str(args.rss_tokens),
               "--rss-checkpoint", args.rss_checkpoint]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode == 0:
            rss = json.loads(p.stdout.strip().splitlines()[-1])
        else:
            rss = {"error": p.stderr[-2000:]}
    res["rss_stream"] = rss
    res["seconds"] = round(time.time() - t0, 1)
    res["acceptance"] = acceptance(res)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recall.json").write_text(json.dumps(res, indent=2) + "\n")
    md = render_md(res)
    (out / "recall.md").write_text(md)
    if Path(args.out).resolve() == OUT.resolve():
        update_readme(md)
    print(json.dumps(res["acceptance"]))
    return 0


def update_readme(md: str) -> None:
    """Copy the benchmark tables into the pipeline README between its result markers."""
    readme = ROOT / "pipelines" / "recall" / "README.md"
    text = readme.read_text()
    a, b = "<!-- results:start -->", "<!-- results:end -->"
    if a in text and b in text:
        body = md.split("\n", 1)[1].replace("\n## ", "\n### ")  # drop the title, demote headings
        text = text[: text.index(a) + len(a)] + "\n" + body.strip() + "\n" + text[text.index(b) :]
        readme.write_text(text)


def _mults(m: dict[str, Any]) -> list[int]:
    return sorted(int(k[4:-1]) for k in m if k.startswith("acc_") and k.endswith("x"))


def acceptance(res: dict[str, Any]) -> dict[str, Any]:
    def acc(group: str, name: str, key: str = "accuracy") -> float | None:
        m = res[group].get(name, {})
        return m.get(key)

    out: dict[str, Any] = {}
    a, h = acc("mqar", "attn-mqar"), acc("mqar", "hybrid-mqar")
    out["mqar_attention_ge_0.99"] = None if a is None else a >= 0.99
    out["mqar_hybrid_ge_0.99"] = None if h is None else h >= 0.99
    out["mqar_mamba"] = acc("mqar", "mamba-mqar")
    i64 = acc("induction", "mamba-induction", "acc_64x")
    out["induction_mamba_16k_ge_0.99"] = None if i64 is None else i64 >= 0.99
    p64 = acc("passkey", "mamba-retrieval-passkey", "acc_64x")
    out["passkey_retrieval_32k_ge_0.95"] = None if p64 is None else p64 >= 0.95
    out["passkey_sink_window_32k"] = acc("passkey", "mamba-sinkwindow-passkey", "acc_64x")
    r = res.get("rss_stream") or {}
    mk = r.get("marks", {})
    if str(1 << 16) in mk and str(1 << 20) in mk:
        a64, a1m = mk[str(1 << 16)]["rss_kib"], mk[str(1 << 20)]["rss_kib"]
        out["rss_64k_mib"] = round(a64 / 1024, 1)
        out["rss_1m_mib"] = round(a1m / 1024, 1)
        out["rss_flat"] = a1m <= a64 * 1.10 + 16 * 1024  # within 10% (+16 MiB allocator slack)
    return out


def render_md(res: dict[str, Any]) -> str:
    L: list[str] = ["# Recall benchmark", "",
                    f"Command: `{res['command']}` ({res['seconds']} s). Machine: {res['machine']['platform']}, "
                    f"{res['machine']['cpus']} CPUs (shared), torch {res['machine']['torch']}. "
                    "Accuracies come from each checkpoint's evaluation grid (generated test examples, fixed seeds).", ""]
    L += ["## Acceptance", "", "| check | result |", "|---|---|"]
    for k, v in res["acceptance"].items():
        L.append(f"| {k} | {_fmt(v)} |")
    L += ["", "## MQAR (seq 256, 16 KV pairs, width 64)", "",
          "| model | checkpoint | vocab | steps | acc (256) | acc 4x (1K) | acc 16x (4K) | acc 64x (16K) | state bytes at 16K |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["mqar"].items():
        if m.get("missing"):
            L.append(f"| {m['label']} | recall/{name} | not trained | | | | | | |")
            continue
        L.append(f"| {m['label']} | recall/{name} | {m['vocab_size']} | {m.get('steps')} | {_fmt(m.get('accuracy'))} | "
                 f"{_fmt(m.get('acc_4x'))} | {_fmt(m.get('acc_16x'))} | {_fmt(m.get('acc_64x'))} | "
                 f"{m.get('state_bytes')} |")
    for group, title in (("induction", "Induction heads (trained at 256)"),
                         ("passkey", "Passkey retrieval (needle `KEY d1 d2` in noise, query `QUERY d1`, exact "
                                     "match of both digits; trained at 512)")):
        L += ["", f"## {title}", ""]
        for name, m in res[group].items():
            if m.get("missing"):
                L.append(f"- {m['label']} (recall/{name}): {NOT_SHIPPED.get(name, 'not trained')}")
                continue
            steps = f"{m['steps']} steps" if m.get("steps") is not None else "derived, no training"
            L.append(f"**{m['label']}** (`recall/{name}`, {steps}, {m.get('n')} examples, effective length "
                     f"{m.get('effective_length')} = {m.get('effective_multiplier')}x)")
            L.append("")
            grid = m.get("grid", {})
            depths = sorted({d for row in grid.values() for d in row}, key=lambda s: (s == "any", s))
            L.append("| length | " + " | ".join(f"depth {d}" for d in depths) + " | state bytes |")
            L.append("|---|" + "---|" * (len(depths) + 1))
            for length, row in grid.items():
                mult = int(length) // int(m.get("train_len", 1))
                L.append(f"| {length} ({mult}x) | " + " | ".join(_fmt(row.get(d)) for d in depths)
                         + f" | {m.get(f'state_bytes_{mult}x', '')} |")
            L.append("")
    L += ["## Accuracy against streaming-state bytes", "",
          "| checkpoint | task | acc (train length) | state at train length | acc at longest | state at longest |",
          "|---|---|---|---|---|---|"]
    for r in res["state_vs_accuracy"]:
        L.append(f"| {r['checkpoint']} | {r['task']} | {_fmt(r['accuracy'])} | {_kib(r['state_bytes_1x'] or 0)} | "
                 f"{_fmt(r['longest_acc'])} | {_kib(r['state_bytes_longest'] or 0)} |")
    r = res.get("rss_stream")
    L += ["", "## Memory while streaming (one sequence, one thread)", ""]
    if not r:
        L.append("Not measured (no passkey retrieval checkpoint).")
    elif "error" in r:
        L.append("RSS worker failed:\n\n```\n" + r["error"] + "\n```")
    else:
        if r.get("reused_from"):
            L.append(f"(measurement reused from `{r['reused_from']}`, made by `python benchmarks/recall.py "
                     f"--rss-worker --rss-checkpoint {r['checkpoint']}`)")
            L.append("")
        ck = os.path.relpath(r["checkpoint"], ROOT) if os.path.isabs(r["checkpoint"]) else r["checkpoint"]
        L.append(f"`{ck}` streamed {r['tokens']} tokens in segments of {r['segment_len']} "
                 f"({r['tokens_per_s']} tokens/s); process RSS at start {r['rss_start_kib'] / 1024:.1f} MiB "
                 f"(the input and prediction tensors of {r['tokens']} tokens are allocated up front).")
        L += ["", "| tokens streamed | VmRSS | VmHWM (peak) | stream state | seconds |", "|---|---|---|---|---|"]
        for k, v in r["marks"].items():
            L.append(f"| {int(k):,} | {v['rss_kib'] / 1024:.1f} MiB | {v['hwm_kib'] / 1024:.1f} MiB | "
                     f"{_kib(v['state_bytes'])} | {v['seconds']} |")
        L.append("")
        L.append(f"Passkey after {r['tokens']:,} tokens (needle at depth 0.05): target {r['target']}, "
                 f"prediction {r['prediction']}.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
