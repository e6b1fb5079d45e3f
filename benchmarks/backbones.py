"""Backbone benchmark: throughput, peak memory and decode latency of every registered mixer
on CPU, against transformers' pure-PyTorch Mamba and SDPA attention, in one process.

Writes ``benchmarks/results/backbones.json`` and ``.md``. For each thread count (pinned
with ``torch.set_num_threads``) and length L in {1K, 4K, 16K, 64K}, batch 1, d_model 256:

- inference forward (``torch.no_grad``) and training step (forward + backward of a scalar
  loss) tokens/s and peak resident memory above the pre-run baseline (VmHWM, reset
  through /proc/self/clear_refs), for every mixer in ``list_mixers()`` built as
  ``cls(256)`` with its defaults (Mamba: d_state 16, expand 2; errors are recorded, not fatal);
- transformers ``MambaModel`` (1 layer, mamba_ssm blocked so its pure-PyTorch
  ``slow_forward`` runs) beside our 1-layer ``SequenceBackbone`` loaded with the same
  weights (outputs compared), and bare ``scaled_dot_product_attention`` (4 heads x 64);
- each Mamba(-2) layer's time beside the time of its linear projections alone (the
  matmul floor: in_proj + x_proj + dt_proj + out_proj GEMMs on the same shapes);
- decode ms/token with ``step`` after a prefill of 1K and 64K tokens;
- the bidirectional wrapper (``Bidirectional(Mamba, Mamba)``: a forward pass plus a reversed
  pass, as Vision Mamba / Caduceus use it) against one causal Mamba pass, forward and training
  step, interleaved at ``--bidir-lengths`` (target <= 2.2x);
- Mamba, Mamba-2 and S4D (d_state 16 / 128 / 64) forward and training step interleaved at ``--ssm-lengths``:
  Mamba's training-step / forward tokens/s (target >= 1/3), Mamba-2 / Mamba and S4D / Mamba tokens/s,
  forward and training step (target >= 1), the acceptance ratios of issue 12 under one load.

Timing: one warm-up, then the minimum over ``--repeats`` runs (the machine is shared; min is
the least noisy estimate). Configurations whose projected time exceeds ``--budget`` seconds
(from the previous length, assuming quadratic growth for attention) are skipped and
marked so. Benchmarks are not tests. Usage::

    nice python benchmarks/backbones.py                       # full run (~30-60 min)
    nice python benchmarks/backbones.py --threads 1 --lengths 1024 4096 --quick
    nice python benchmarks/backbones.py --update --mixers M M2   # re-measure some rows in place
    python benchmarks/backbones.py --render                      # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

for _name in ("mamba_ssm", "causal_conv1d", "mambapy", "kernels"):  # transformers must use its torch path
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timing import cpu_name, interleaved  # noqa: E402  (benchmarks/timing.py)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from longstream.backbones import BackboneConfig, Bidirectional, list_mixers  # noqa: E402
from longstream.backbones.ops import bigbuf, cpu_kernels, heap  # noqa: E402
from longstream.backbones.stack import SequenceBackbone  # noqa: E402

D_MODEL = 256
QUADRATIC = {"A", "Abi", "sdpa"}  # time grows ~ L^2


# ----------------------------------------------------------------------------- measuring
def _status_kb(key: str) -> int:
    m = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak RSS increase of one run of ``fn`` (MiB), after returning freed heap pages and the
    kernels' cached blocks (``ops/bigbuf.py``) to the OS, so that reused blocks are counted."""
    gc.collect()
    bigbuf.trim()
    _malloc_trim()
    base = _status_kb("VmRSS")
    if not _reset_peak():
        return float("nan")
    fn()
    return round((_status_kb("VmHWM") - base) / 1024, 1)


def measure(fn: Callable[[], object], repeats: int) -> dict:
    """Warm-up run, then min wall time over ``repeats`` runs (1 if the warm-up took > 15 s),
    then one more run for the peak memory. The first run of a long training step pays for
    growing the buffer pool and faulting in fresh pages (8 s against 2.2 s in steady state for
    S4D at 64K), and the second is not always steady either, so 64K runs get their repeats too."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats if warm < 15.0 else 1):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"time_s": min(times), "times_s": [round(t, 4) for t in times], "warmup_s": round(warm, 4),
            "peak_mib": peak_mib(fn)}


def fwd_fn(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            out = m(x)
        return out

    return run


def train_fn(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        m.zero_grad(set_to_none=True)
        out = m(x)
        y = out[0] if isinstance(out, tuple) else out
        if not isinstance(y, torch.Tensor):
            y = y.last_hidden_state
        y.float().pow(2).mean().backward()

    return run


# ----------------------------------------------------------------------------- subjects
def build_mixers() -> dict[str, torch.nn.Module]:
    out = {}
    for sym, cls in list_mixers().items():
        try:
            out[sym] = cls(D_MODEL).eval()
        except Exception as e:  # noqa: BLE001
            print(f"  [skip] mixer {sym}: cannot build {cls.__name__}({D_MODEL}): {e}", flush=True)
    return out


class SDPA(torch.nn.Module):
    """Bare causal scaled_dot_product_attention, 4 heads x 64 (no projections)."""

    def forward(self, x: torch.Tensor):
        b, l, d = x.shape
        q = x.view(b, l, 4, d // 4).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(b, l, d), None


def build_hf_pair():
    """transformers MambaModel (1 layer) and our 1-layer SequenceBackbone with its weights."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=16, hidden_size=D_MODEL, state_size=16, num_hidden_layers=1, expand=2,
                                   conv_kernel=4, use_mambapy=False)
    hf = transformers.MambaModel(cfg).eval()
    ours = SequenceBackbone(BackboneConfig(d_model=D_MODEL, n_layers=1, pattern="M",
                                           mixer_kwargs={"M": {"d_state": 16, "expand": 2}})).eval()
    sd = {k: v for k, v in hf.state_dict().items() if not k.startswith("embeddings.")}
    ours.load_state_dict(sd)
    return hf, ours, transformers.__version__


class HFWrap(torch.nn.Module):
    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(inputs_embeds=x, use_cache=False).last_hidden_state, None


def projection_floor(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The GEMMs of a Mamba / Mamba-2 layer alone, on inputs of the right shapes, through the
    layer's own GEMM path (``bigbuf.linear``: pooled outputs, oneDNN or MKL as the layer uses)."""
    b, l, _ = x.shape
    w_in, w_out = m.in_proj.weight, m.out_proj.weight
    y_in = torch.randn(b, l, w_out.shape[1])
    if hasattr(m, "x_proj"):
        u = torch.randn(b, l, m.x_proj.weight.shape[1])
        dt_low = torch.randn(b, l, m.dt_proj.weight.shape[1])

        def run():
            with torch.no_grad():
                bigbuf.linear(x, w_in)
                bigbuf.linear(u, m.x_proj.weight)
                bigbuf.linear(dt_low, m.dt_proj.weight)
                bigbuf.linear(y_in, w_out)

        return run

    def run2():
        with torch.no_grad():
            bigbuf.linear(x, w_in)
            bigbuf.linear(y_in, w_out)

    return run2


def bidirectional_ratio(L: int, repeats: int) -> dict:
    """Interleaved times of Bidirectional(Mamba, Mamba) vs one Mamba pass (forward, training step)."""
    mixer = list_mixers()["M"]
    torch.manual_seed(0)
    causal, bi = mixer(D_MODEL).eval(), Bidirectional(mixer(D_MODEL), mixer(D_MODEL)).eval()
    out: dict = {"L": L, "repeats": repeats}
    for mode in ("infer", "train"):
        x = torch.randn(1, L, D_MODEL, requires_grad=(mode == "train"))
        mk = fwd_fn if mode == "infer" else train_fn
        r = interleaved({"causal": mk(causal, x), "bidirectional": mk(bi, x)}, repeats)
        r["ratio"] = round(r["bidirectional"]["time_s"] / r["causal"]["time_s"], 3)
        out[mode] = r
    return out


def ssm_ratios(L: int, repeats: int) -> dict:
    """Interleaved forward and training step of Mamba, Mamba-2 and S4D (each ``cls(256)``) at L:
    the training-step / forward ratio of Mamba and the Mamba-2 / Mamba and S4D / Mamba ratios,
    tokens/s."""
    mixers = list_mixers()
    torch.manual_seed(0)
    ms = {"M": mixers["M"](D_MODEL), "M2": mixers["M2"](D_MODEL), "S": mixers["S"](D_MODEL)}
    xf, xt = torch.randn(1, L, D_MODEL), torch.randn(1, L, D_MODEL, requires_grad=True)

    def infer(m):
        f = fwd_fn(m, xf)
        return lambda: (m.eval(), f())

    def train(m):
        f = train_fn(m, xt)
        return lambda: (m.train(), f(), m.eval())

    fns = {f"{n}_{k}": mk(m) for n, m in ms.items() for k, mk in (("infer", infer), ("train", train))}
    r = interleaved(fns, repeats)
    t = {k: v["time_s"] for k, v in r.items()}
    r["L"], r["repeats"] = L, repeats
    r["M_train_over_infer"] = round(t["M_infer"] / t["M_train"], 3)  # tokens/s ratio
    r["M2_over_M_infer"] = round(t["M_infer"] / t["M2_infer"], 3)
    r["M2_over_M_train"] = round(t["M_train"] / t["M2_train"], 3)
    r["S_over_M_infer"] = round(t["M_infer"] / t["S_infer"], 3)
    r["S_over_M_train"] = round(t["M_train"] / t["S_train"], 3)
    return r


def decode_ms(m: torch.nn.Module, context: int, steps: int, repeats: int) -> dict:
    """Prefill ``context`` tokens with forward, then time ``steps`` calls of step (min over repeats)."""
    x = torch.randn(1, context, D_MODEL)
    xt = torch.randn(steps, 1, D_MODEL)
    with torch.no_grad():
        t0 = time.perf_counter()
        _, st = m(x)
        prefill = time.perf_counter() - t0
        best = math.inf
        for _ in range(repeats):
            s = st
            t0 = time.perf_counter()
            for i in range(steps):
                _, s = m.step(xt[i], s)
            best = min(best, (time.perf_counter() - t0) / steps * 1e3)
    return {"ms_per_token": round(best, 4), "prefill_s": round(prefill, 3)}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=30.0, help="skip a run projected to take longer (s)")
    ap.add_argument("--key-repeats", type=int, default=5, help="repeats of the interleaved acceptance timings")
    ap.add_argument("--decode-contexts", type=int, nargs="+", default=[1024, 65536])
    ap.add_argument("--decode-steps", type=int, default=200)
    ap.add_argument("--bidir-lengths", type=int, nargs="*", default=[16384],
                    help="lengths of the bidirectional-vs-causal timing (none: skip it)")
    ap.add_argument("--ssm-lengths", type=int, nargs="*", default=[16384],
                    help="lengths of the interleaved Mamba / Mamba-2 ratios (none: skip them)")
    ap.add_argument("--mixers", nargs="*", default=None, help="subset of mixer symbols (default: all)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 repeat, short decode")
    ap.add_argument("--no-baselines", action="store_true", help="skip transformers and bare SDPA")
    ap.add_argument("--key-only", action="store_true", help="only the interleaved acceptance timings")
    ap.add_argument("--update", action="store_true",
                    help="merge into the existing OUT.json: re-measured entries replace the old ones")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "backbones"))
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    a = ap.parse_args()
    if a.render:
        Path(a.out + ".md").write_text(render_markdown(json.loads(Path(a.out + ".json").read_text())))
        return
    if a.quick:
        a.repeats, a.decode_steps = 1, 50

    ext = cpu_kernels.available()
    mixers = build_mixers()
    if a.mixers:
        mixers = {k: v for k, v in mixers.items() if k in a.mixers}
    hf, ours1, hf_version = None, None, None
    if not a.no_baselines:
        try:
            hf, ours1, hf_version = build_hf_pair()
        except Exception as e:  # noqa: BLE001
            print(f"  [skip] transformers baseline: {e}", flush=True)
    subjects: dict[str, torch.nn.Module] = {} if a.key_only else dict(mixers)
    if not a.no_baselines and not a.key_only:
        subjects["sdpa"] = SDPA()
        if hf is not None:
            subjects["hf_mamba_model"] = HFWrap(hf)
            subjects["ours_mamba_model"] = ours1

    res: dict = {
        "meta": {
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "cmd": " ".join([Path(sys.executable).name, *sys.argv]),
            "torch": torch.__version__, "transformers": hf_version, "python": platform.python_version(),
            "cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_start": os.getloadavg(),
            "compiled_cpu_kernels": ext, "gemm": bigbuf.gemm_backend(), "heap_keeps_freed": heap.keep_freed_memory(), "d_model": D_MODEL, "batch": 1, "repeats": a.repeats, "timing": "min",
            "memory": "peak RSS increase over the pre-run RSS (VmHWM reset via /proc/self/clear_refs), MiB",
            "mixers": {k: type(v).__name__ for k, v in subjects.items()},
        },
        "runs": {},
        "projection_floor": {},
        "decode": {},
        "parity_hf_vs_ours_max_abs": None,
    }
    if a.update and Path(a.out + ".json").exists():
        old = json.loads(Path(a.out + ".json").read_text())
        old["meta"].setdefault("updates", []).append(
            {"cmd": res["meta"]["cmd"], "date_utc": res["meta"]["date_utc"], "load_avg_start": os.getloadavg()}
        )
        res = {**res, **{k: v for k, v in old.items()}}
    if hf is not None:
        x = torch.randn(1, 1024, D_MODEL)
        with torch.no_grad():
            diff = (HFWrap(hf)(x)[0] - ours1(x)[0]).abs().max().item()
        res["parity_hf_vs_ours_max_abs"] = diff
        print(f"parity transformers vs ours (L=1024): max |diff| = {diff:.2e}", flush=True)

    for nt in a.threads:
        torch.set_num_threads(nt)
        tkey = f"threads={nt}"
        print(f"== {tkey} (torch.get_num_threads() = {torch.get_num_threads()})", flush=True)
        runs = res["runs"].setdefault(tkey, {})
        for name, m in subjects.items():
            for mode in ("infer", "train"):
                if mode == "train" and (a.no_train or name == "sdpa"):
                    continue
                prev: tuple[int, float] | None = None
                for L in a.lengths:
                    key = f"{name}/{mode}/L={L}"
                    entry: dict
                    if prev is not None:
                        p = 2.0 if name in QUADRATIC else 1.0
                        proj = prev[1] * (L / prev[0]) ** p * (a.repeats + 1)
                        if proj > a.budget * (a.repeats + 1):
                            entry = {"skipped": f"projected {proj / (a.repeats + 1):.0f} s per run > budget {a.budget:.0f} s"}
                            runs[key] = entry
                            print(f"  {key:40s} skipped ({entry['skipped']})", flush=True)
                            continue
                    if name == "hf_mamba_model" and mode == "train":
                        entry = {"skipped": "transformers' torch-path training step took 145 s at L=1024 (1 thread) "
                                            "in a trial run of this benchmark; not repeated"}
                        runs[key] = entry
                        print(f"  {key:40s} skipped", flush=True)
                        break
                    if name == "hf_mamba_model" and L > 16384:
                        gib = 3 * 2 * D_MODEL * L * 16 * 4 / 2**30
                        entry = {"skipped": f"materialises (b, e, l, n) tensors: ~{gib:.0f} GiB and minutes per run"}
                        runs[key] = entry
                        print(f"  {key:40s} skipped ({entry['skipped']})", flush=True)
                        continue
                    x = torch.randn(1, L, D_MODEL, requires_grad=(mode == "train"))
                    try:
                        fn = fwd_fn(m, x) if mode == "infer" else train_fn(m.train(), x)
                        entry = measure(fn, a.repeats if L < 65536 else max(1, a.repeats - 1))
                        entry["tokens_per_s"] = round(L / entry["time_s"], 1)
                        prev = (L, entry["time_s"])
                    except Exception as e:  # noqa: BLE001
                        entry = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                        traceback.print_exc(limit=2)
                    finally:
                        m.eval()
                        m.zero_grad(set_to_none=True)
                    runs[key] = entry
                    print(f"  {key:40s} {_fmt(entry)}", flush=True)
                    _save(res, a.out)
        # projection floor of the SSM layers
        for name in ("M", "M2"):
            if name not in mixers or a.key_only:
                continue
            for L in a.lengths:
                x = torch.randn(1, L, D_MODEL)
                e = measure(projection_floor(mixers[name], x), a.repeats if L < 65536 else max(1, a.repeats - 1))
                key = f"{tkey}/{name}/L={L}"
                layer = runs.get(f"{name}/infer/L={L}", {})
                if "time_s" in layer:
                    e["layer_time_s"] = layer["time_s"]
                    e["layer_over_projections"] = round(layer["time_s"] / e["time_s"], 2)
                res["projection_floor"][key] = e
                print(f"  projections {key:30s} {e['time_s']:.4f} s; layer / projections = {e.get('layer_over_projections')}",
                      flush=True)
        # acceptance timings, interleaved so that load changes hit every subject alike
        L = 16384
        if L in a.lengths and "M" in mixers:
            x = torch.randn(1, L, D_MODEL)
            fns = {"M_layer": fwd_fn(mixers["M"], x), "M_projections": projection_floor(mixers["M"], x)}
            if ours1 is not None:
                fns["ours_mamba_model"] = fwd_fn(ours1, x)
            if hf is not None:  # every repetition runs each subject once, transformers included
                fns["hf_mamba_model"] = fwd_fn(HFWrap(hf), x)
            r = interleaved(fns, a.key_repeats)
            r["L"] = L
            r["repeats"] = a.key_repeats
            res.setdefault("key", {})[tkey] = r
            print(f"  key timings L={L}: " + ", ".join(f"{k}={v['time_s']:.3f}s" for k, v in r.items() if isinstance(v, dict)),
                  flush=True)
            _save(res, a.out)
        # bidirectional wrapper vs one causal pass, interleaved
        for L in a.bidir_lengths:
            r = bidirectional_ratio(L, a.key_repeats)
            res.setdefault("bidirectional", {})[f"{tkey}/L={L}"] = r
            print(f"  bidirectional / causal L={L}: forward {r['infer']['ratio']:.2f}x, "
                  f"training step {r['train']['ratio']:.2f}x", flush=True)
            _save(res, a.out)
        # Mamba / Mamba-2 acceptance ratios, interleaved
        for L in a.ssm_lengths:
            r = ssm_ratios(L, a.key_repeats)
            res.setdefault("ssm_ratios", {})[f"{tkey}/L={L}"] = r
            print(f"  ssm ratios L={L}: Mamba train/forward {r['M_train_over_infer']:.3f}, Mamba-2/Mamba forward "
                  f"{r['M2_over_M_infer']:.3f}, training step {r['M2_over_M_train']:.3f}; S4D/Mamba forward "
                  f"{r['S_over_M_infer']:.3f}, training step {r['S_over_M_train']:.3f}", flush=True)
            _save(res, a.out)
        # decode
        for name, m in mixers.items():
            if not getattr(m, "supports_step", False) or a.key_only:
                continue
            for ctx in a.decode_contexts:
                key = f"{tkey}/{name}/context={ctx}"
                if name in QUADRATIC and ctx > 16384:
                    res["decode"][key] = {"skipped": "prefill of a quadratic mixer at this context exceeds the budget"}
                    continue
                try:
                    res["decode"][key] = decode_ms(m, ctx, a.decode_steps, a.repeats)
                except Exception as e:  # noqa: BLE001
                    res["decode"][key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                print(f"  decode {key:32s} {res['decode'][key]}", flush=True)
            _save(res, a.out)
    res["meta"]["load_avg_end"] = os.getloadavg()
    _save(res, a.out)
    print(f"wrote {a.out}.json and {a.out}.md")


def _fmt(e: dict) -> str:
    if "time_s" in e:
        return f"{e['time_s']:.4f} s  {e['tokens_per_s']:>12,.0f} tok/s  peak {e['peak_mib']:.0f} MiB"
    return str(e)


# ----------------------------------------------------------------------------- report
def _save(res: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(res, indent=1))
    Path(out + ".md").write_text(render_markdown(res))


def render_markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# Backbone benchmark (CPU)",
        "",
        f"Generated by `{m['cmd']}` on {m['date_utc']} UTC. CPU: {m['cpu']} ({m['cores']} cores, shared with other "
        f"jobs; load average at start {tuple(round(x, 1) for x in m['load_avg_start'])}). torch {m['torch']}, "
        f"transformers {m['transformers']}, compiled CPU kernels: {m['compiled_cpu_kernels']}, float32 GEMM "
        f"{m.get('gemm', 'onednn')}, freed large blocks kept in the heap (`ops/heap.py`): {m.get('heap_keeps_freed', False)}. "
        f"d_model {m['d_model']}, "
        f"batch 1; time = min over {m['repeats']} runs after a warm-up; memory = {m['memory']}.",
        "",
    ]
    if any(k != "threads=1" for k in res["runs"]):
        lines += ["Multi-thread runs on a shared box: when the other core is busy, every parallel op waits for a "
                  "descheduled worker thread, so paths made of many small ops (decode steps, Mamba-2's chunk "
                  "einsums) can be several times slower with 2 threads than with 1; read them as measured under "
                  "contention, not as scaling.", ""]
    for u in m.get("updates", []):
        lines += [f"Updated by `{u['cmd']}` on {u['date_utc']} UTC (load average "
                  f"{tuple(round(x, 1) for x in u['load_avg_start'])}): the entries it measured replace older ones.", ""]
    acc = _acceptance(res)
    if acc:
        lines += ["## Acceptance checks", "", *acc, ""]
    for tkey, runs in res["runs"].items():
        names = sorted({k.split("/")[0] for k in runs}, key=lambda s: (s.startswith(("hf", "ours", "sdpa")), s))
        lengths = sorted({int(k.split("L=")[1]) for k in runs})
        for mode, title in (("infer", "inference forward"), ("train", "training step (forward + backward)")):
            lines += [f"## {tkey}: {title} — tokens/s (peak MiB)", "",
                      "| mixer | " + " | ".join(f"L={L}" for L in lengths) + " |",
                      "|---|" + "---|" * len(lengths)]
            for n in names:
                cells = []
                for L in lengths:
                    e = runs.get(f"{n}/{mode}/L={L}")
                    if e is None:
                        cells.append("")
                    elif "time_s" in e:
                        cells.append(f"{e['tokens_per_s']:,.0f} ({e['peak_mib']:.0f})")
                    elif "skipped" in e:
                        cells.append("skipped")
                    else:
                        cells.append("error")
                if any(cells):
                    lines.append(f"| {n} ({m['mixers'].get(n, '')}) | " + " | ".join(cells) + " |")
            lines.append("")
        notes = [f"- `{k}`: {v.get('skipped') or v.get('error')}" for k, v in runs.items() if "time_s" not in v]
        if notes:
            lines += [f"Skipped / failed ({tkey}):", "", *notes, ""]
    if res["projection_floor"]:
        lines += ["## SSM layer time vs its projections alone (matmul floor), inference", "",
                  "| run | projections s | layer s | layer / projections |", "|---|---|---|---|"]
        for k, e in res["projection_floor"].items():
            lines.append(f"| {k} | {e['time_s']:.4f} | {e.get('layer_time_s', float('nan')):.4f} | "
                         f"{e.get('layer_over_projections')} |")
        lines.append("")
    if res["decode"]:
        lines += ["## Decode latency (step after a prefill)", "", "| run | ms/token | prefill s |", "|---|---|---|"]
        for k, e in res["decode"].items():
            lines.append(f"| {k} | {e.get('ms_per_token', e.get('skipped', e.get('error')))} | {e.get('prefill_s', '')} |")
        lines.append("")
    if res.get("parity_hf_vs_ours_max_abs") is not None:
        lines += [f"transformers MambaModel vs ours on the same weights (L=1024): max |diff| = "
                  f"{res['parity_hf_vs_ours_max_abs']:.2e}.", ""]
    return "\n".join(lines) + "\n"


def _acceptance(res: dict) -> list[str]:
    out = []
    for tkey, k in res.get("key", {}).items():
        L = k["L"]
        t = {n: v["time_s"] for n, v in k.items() if isinstance(v, dict)}
        if "hf_mamba_model" in t:
            ours = t["ours_mamba_model"]
            out.append(f"- {tkey}, L={L} (interleaved, min of {k.get('repeats', '?')} repeats): 1-layer MambaModel ours {L / ours:,.0f} tok/s vs "
                       f"transformers {L / t['hf_mamba_model']:,.0f} tok/s = **{t['hf_mamba_model'] / ours:.1f}x** "
                       f"(target >= 15x); Mamba mixer alone {L / t['M_layer']:,.0f} tok/s = "
                       f"{t['hf_mamba_model'] / t['M_layer']:.1f}x"
                       + (f"; ceiling with a free scan, conv and norm: transformers / our projections' GEMMs alone = "
                          f"{t['hf_mamba_model'] / t['M_projections']:.1f}x" if "M_projections" in t else ""))
        if "M_projections" in t:
            out.append(f"- {tkey}, L={L}: Mamba layer {t['M_layer']:.3f} s / its projections alone "
                       f"{t['M_projections']:.3f} s = **{t['M_layer'] / t['M_projections']:.2f}x** (target <= 3x)")
    for key, r in res.get("bidirectional", {}).items():
        out.append(f"- {key} (interleaved, min of {r.get('repeats', '?')} repeats): Bidirectional(Mamba, Mamba) / "
                   f"one causal Mamba pass = **{r['infer']['ratio']:.2f}x** forward "
                   f"({r['infer']['bidirectional']['time_s']:.3f} s / {r['infer']['causal']['time_s']:.3f} s), "
                   f"**{r['train']['ratio']:.2f}x** training step ({r['train']['bidirectional']['time_s']:.3f} s / "
                   f"{r['train']['causal']['time_s']:.3f} s) (target <= 2.2x)")
    for key, r in res.get("ssm_ratios", {}).items():
        out.append(f"- {key} (interleaved, min of {r.get('repeats', '?')} repeats): Mamba training step / forward "
                   f"tokens/s = **{r['M_train_over_infer']:.3f}** (target >= 0.333); Mamba-2 / Mamba tokens/s "
                   f"forward **{r['M2_over_M_infer']:.3f}**, training step **{r['M2_over_M_train']:.3f}** (target >= 1)"
                   + (f"; S4D (N 64) / Mamba tokens/s forward **{r['S_over_M_infer']:.3f}**, training step "
                      f"**{r['S_over_M_train']:.3f}** (target >= 1)" if "S_over_M_infer" in r else ""))
    for tkey, runs in res["runs"].items():
        for L in (16384, 4096):
            h, o, ml = (runs.get(f"{n}/infer/L={L}", {}) for n in ("hf_mamba_model", "ours_mamba_model", "M"))
            if "time_s" in h and "time_s" in o:
                out.append(f"- {tkey}, L={L}, table runs (measured minutes apart, so load changes skew this ratio): "
                           f"1-layer MambaModel, ours {o['tokens_per_s']:,.0f} tok/s vs transformers "
                           f"{h['tokens_per_s']:,.0f} tok/s = **{h['time_s'] / o['time_s']:.1f}x** (target >= 15x); "
                           f"Mamba layer alone {ml.get('tokens_per_s', float('nan')):,.0f} tok/s = "
                           f"{h['time_s'] / ml['time_s'] if 'time_s' in ml else float('nan'):.1f}x")
                break
        pf = res["projection_floor"].get(f"{tkey}/M/L=16384")
        if pf and "layer_over_projections" in pf:
            out.append(f"- {tkey}, L=16384, table runs: Mamba layer / its projections = "
                       f"**{pf['layer_over_projections']}x** (target <= 3x)")
        d1, d64 = res["decode"].get(f"{tkey}/M/context=1024", {}), res["decode"].get(f"{tkey}/M/context=65536", {})
        if "ms_per_token" in d1 and "ms_per_token" in d64:
            out.append(f"- {tkey}: Mamba decode {d64['ms_per_token']:.3f} ms/token at 64K vs {d1['ms_per_token']:.3f} at 1K "
                       f"= **{d64['ms_per_token'] / d1['ms_per_token']:.2f}x** (target <= 1.2x)")
        sm, mm = runs.get("S/infer/L=65536", {}), runs.get("M/infer/L=65536", {})
        if "peak_mib" in sm and "peak_mib" in mm:
            out.append(f"- {tkey}: S4D (N 64) / Mamba peak memory of a 64K forward = {sm['peak_mib']:.0f} / "
                       f"{mm['peak_mib']:.0f} MiB = **{sm['peak_mib'] / mm['peak_mib']:.2f}x** (target <= 2x)")
        mem = [(int(k.split("L=")[1]), e["peak_mib"]) for k, e in runs.items()
               if k.startswith("M/infer/") and "peak_mib" in e]
        if len(mem) >= 2:
            mem.sort()
            per_tok = ", ".join(f"L={L}: {p:.0f} MiB ({p * 1024 / L:.1f} KiB/token)" for L, p in mem)
            out.append(f"- {tkey}: Mamba inference peak memory {per_tok}")
    return out


if __name__ == "__main__":
    main()
