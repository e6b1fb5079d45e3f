"""Vision benchmark (issue 15). ``--efficiency``: evaluation 3, efficiency vs resolution.

Inference time and peak memory of Vision Mamba (``vim_tiny_patch16_224``: d 192, 24 layers) against
timm's DeiT-tiny (``deit_tiny_patch16_224``: d 192, 12 layers, 3 heads) with the same patch size at
224, 512, 768, 1024 and 1248 pixels (196 ... 6,084 patches), random weights, batch 1, ``torch.inference_mode``,
on ``--threads`` threads. DeiT runs twice: on timm's fused attention
(``F.scaled_dot_product_attention``) and on explicit attention (``attn.fused_attn = False`` in every
block: softmax(QK^T) materialised, the setting of the Vim paper's comparison). This is the
comparison of Vim's Fig. 1 / Table 4 (Vim-Ti vs DeiT-Ti; their claim on an A800 GPU: 2.8x faster
and -86.8% memory at 1248 px), measured on a CPU.

- time: the three models of one resolution are timed interleaved in this process
  (``benchmarks/timing.py``: one warm-up each, then ``--repeats`` rounds of vim, fused, explicit),
  median and minimum reported, ratios from the medians;
- peak memory: one fresh subprocess per (model, resolution) builds the model and the input, runs
  one forward (its peak is kept as ``cold_peak_mib``: it includes one-time library set-up), frees
  the allocator's caches (``malloc_trim``, the kernels' buffer pool) and records the peak resident
  set size *above* that baseline during a second forward (``peak_mib``; ``VmHWM`` reset through
  ``/proc/self/clear_refs``), so activations and attention matrices are counted and weights and
  the interpreter are not.

Writes ``benchmarks/results/vision_efficiency.json`` and ``.md`` (the load average before and after
is recorded: the machine is shared). Usage::

    nice python benchmarks/vision.py --efficiency                 # the whole curve, 1 thread
    nice python benchmarks/vision.py --efficiency --threads 2 --append   # adds a 2-thread section
    python benchmarks/vision.py --efficiency --quick              # 224 / 512 only, smoke run
    python benchmarks/vision.py --render                          # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_name, interleaved  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RESOLUTIONS = (224, 512, 768, 1024, 1248)
MODELS = ("vim", "deit_fused", "deit_explicit")
LABELS = {"vim": "Vim-Ti", "deit_fused": "DeiT-Ti fused attn", "deit_explicit": "DeiT-Ti explicit attn"}


def build(kind: str, res: int) -> torch.nn.Module:
    """A randomly initialised model for ``res`` x ``res`` images."""
    import timm

    import longstream.pipelines.vision.vim  # noqa: F401  (registers vim_* with timm)

    torch.manual_seed(0)
    if kind == "vim":
        return timm.create_model("vim_tiny_patch16_224", img_size=res).eval()
    m = timm.create_model("deit_tiny_patch16_224", img_size=res).eval()
    for blk in m.blocks:
        blk.attn.fused_attn = kind == "deit_fused"
    return m


def _status_kb(key: str) -> int:
    m = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def _trim() -> None:
    from longstream.backbones.ops import bigbuf

    gc.collect()
    bigbuf.trim()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_forward(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """(peak RSS above the current RSS during one forward in MiB, that baseline in MiB, seconds)."""
    _trim()
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = model(x)
    dt = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    assert torch.isfinite(y).all()
    del y
    return round((peak - base) / 1024, 1), round(base / 1024, 1), round(dt, 3)


def peak_point(kind: str, res: int, threads: int) -> dict:
    """In this (fresh) process: peak RSS above the baseline during a first (cold: one-time library
    initialisation included) and a second forward (``peak_mib``: what the forward itself needs)."""
    torch.set_num_threads(threads)
    from longstream.backbones.ops import cpu_kernels

    cpu_kernels.available()  # load the compiled kernels before the baseline
    model = build(kind, res)
    x = torch.randn(1, 3, res, res)
    cold, _, cold_t = _peak_forward(model, x)
    warm, base, warm_t = _peak_forward(model, x)
    return {"peak_mib": warm, "cold_peak_mib": cold, "baseline_mib": base, "cold_time_s": cold_t, "warm_time_s": warm_t}


def _peak_subprocess(kind: str, res: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--_peak", kind, str(res), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_efficiency(resolutions: list[int], threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    points = []
    for res in resolutions:
        models = {k: build(k, res) for k in MODELS}
        x = torch.randn(1, 3, res, res)

        def fn(m, x=x):
            def run():
                with torch.inference_mode():
                    return m(x)

            return run

        with torch.inference_mode():
            outs = {k: m(x) for k, m in models.items()}
        torch.testing.assert_close(outs["deit_fused"], outs["deit_explicit"], atol=1e-3, rtol=1e-3)
        t = interleaved({k: fn(m) for k, m in models.items()}, repeats)
        del models
        gc.collect()
        p = {"res": res, "tokens": (res // 16) ** 2 + 1}
        for k in MODELS:
            p[k] = {"median_s": round(statistics.median(t[k]["times_s"]), 4), "min_s": round(t[k]["time_s"], 4),
                    "times_s": t[k]["times_s"], **_peak_subprocess(k, res, threads)}
        v = p["vim"]
        for k in ("deit_fused", "deit_explicit"):
            p[f"speedup_vs_{k}"] = round(p[k]["median_s"] / v["median_s"], 2)
            if "peak_mib" in v and "peak_mib" in p[k] and p[k]["peak_mib"] > 0:
                p[f"memory_ratio_vs_{k}"] = round(v["peak_mib"] / p[k]["peak_mib"], 3)
        print(json.dumps({kk: vv for kk, vv in p.items() if not isinstance(vv, dict)}), flush=True)
        points.append(p)
    return {"threads": threads, "repeats": repeats, "points": points}


def _goals(sec: dict) -> list[str]:
    by = {p["res"]: p for p in sec["points"]}
    lines = []
    if 1024 in by:
        p = by[1024]
        s, r = p.get("speedup_vs_deit_explicit"), p.get("memory_ratio_vs_deit_explicit")
        ok = s is not None and r is not None and s >= 2 and r <= 0.2
        lines.append(f"1024 px: Vim {s}x faster than explicit-attention DeiT (goal >= 2x), peak memory {r}x "
                     f"of it (goal <= 0.2x): {'met' if ok else 'NOT met'}")
    if 1248 in by:
        s = by[1248].get("speedup_vs_deit_fused")
        lines.append(f"1248 px: Vim {s}x the speed of fused-attention DeiT (goal > 1x): "
                     f"{'met' if s is not None and s > 1 else 'NOT met'}")
    return lines


def render(res: dict) -> str:
    out = ["# Vision efficiency: Vim-Ti vs DeiT-Ti across resolutions", "",
           f"CPU: {res['cpu']}; torch {res['torch']}; batch 1, random weights, `torch.inference_mode`. "
           f"Vim-Ti: {res['params']['vim'] / 1e6:.2f}M parameters (24 layers), DeiT-Ti: "
           f"{res['params']['deit_fused'] / 1e6:.2f}M (12 layers); both d 192, patch 16. Command: `{res['command']}`.",
           "", "Time: median of interleaved repeats in one process (min in the JSON). Peak memory: RSS above the "
           "baseline during a second forward (the first one's, with one-time library set-up, is `cold_peak_mib` in "
           "the JSON), one fresh process per cell. Ratios: DeiT time / Vim time, "
           "Vim memory / DeiT memory.", ""]  # fmt: skip
    for sec in res["sections"]:
        out += [f"## {sec['threads']} thread(s), {sec['repeats']} repeats; load average {sec['load_before']} -> "
                f"{sec['load_after']}", ""]
        if sec.get("note"):
            out += [f"Note: {sec['note']}", ""]
        out += ["| px | tokens | Vim s | DeiT fused s | DeiT explicit s | speed-up vs explicit | vs fused | "
                "Vim MiB | DeiT fused MiB | DeiT explicit MiB | memory vs explicit | vs fused |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in sec["points"]:
            mem = [p[k].get("peak_mib", p[k].get("error", "?")) for k in MODELS]
            out.append(
                f"| {p['res']} | {p['tokens']} | {p['vim']['median_s']:.3f} | {p['deit_fused']['median_s']:.3f} | "
                f"{p['deit_explicit']['median_s']:.3f} | {p['speedup_vs_deit_explicit']}x | "
                f"{p['speedup_vs_deit_fused']}x | {mem[0]} | {mem[1]} | {mem[2]} | "
                f"{p.get('memory_ratio_vs_deit_explicit', '-')}x | {p.get('memory_ratio_vs_deit_fused', '-')}x |"
            )
        out += ["", *[f"- {g}" for g in _goals(sec)], ""]
    out += ["Vim's paper (A800 GPU, Vim-Ti vs DeiT-Ti at 1248 px): 2.8x faster, 86.8% less GPU memory.", ""]
    return "\n".join(out)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else list(argv))[:1] == ["--quality"]:  # evaluations 1 and 2
        from vision_quality import main as quality_main

        return quality_main((sys.argv[1:] if argv is None else list(argv))[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--efficiency", action="store_true", help="time / peak memory vs resolution (evaluation 3)")
    ap.add_argument("--quality", action="store_true",
                    help="first argument only: Fashion-MNIST accuracy of trained runs (benchmarks/vision_quality.py)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="224 and 512 px, 2 repeats (a smoke run)")
    ap.add_argument("--out", default=str(RESULTS / "vision_efficiency.json"))
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    ap.add_argument("--note", help="a remark stored with (and rendered above) the sections of this run")
    ap.add_argument("--append", action="store_true",
                    help="keep the sections of other thread counts already in --out (replace only these)")
    ap.add_argument("--_peak", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._peak:
        print(json.dumps(peak_point(a._peak[0], int(a._peak[1]), int(a._peak[2]))))
        return 0
    out = Path(a.out)
    if a.render:
        out.with_suffix(".md").write_text(render(json.loads(out.read_text())))
        return 0
    if not a.efficiency:
        ap.error("choose a section: --efficiency")
    resolutions, repeats = ([224, 512], 2) if a.quick else (a.resolutions, a.repeats)
    res = {"cpu": cpu_name(), "torch": torch.__version__, "python": platform.python_version(),
           "command": "python benchmarks/vision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "params": {k: sum(p.numel() for p in build(k, 224).parameters()) for k in MODELS}, "sections": []}
    if a.append and out.exists():
        old = json.loads(out.read_text())
        res["sections"] = [sec for sec in old.get("sections", []) if sec["threads"] not in a.threads]
        res["command"] = old.get("command", "") + "; " + res["command"]
    for th in a.threads:
        before = _load()
        sec = run_efficiency(resolutions, th, repeats)
        sec.update(load_before=before, load_after=_load(), **({"note": a.note} if a.note else {}))
        res["sections"].append(sec)
    res["sections"].sort(key=lambda sec: sec["threads"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
