"""Gradio tab of the recall suite: pick a checkpoint, a length and a depth; see prediction vs target.

``build_demo()`` builds the tab; nothing runs on import and gradio is imported lazily.
"""

from __future__ import annotations

from typing import Any

from longstream.pipelines.common import ModelCache, UserError, connect, number_input

DEMO_TITLE = "Recall (long-context)"
# For the registry-generated demo tests (pipelines/CONTRACT.md, "demo.py"): this tab has no
# upload, so the bad input is a seed too large for a generator (it used to show "Overflow
# when unpacking long long").
DEMO_BAD_INPUT = {"elem_id": "recall-seed", "value": "1e20", "expect": "example seed"}
MAX_SEED = 2**31 - 1


def shipped_checkpoints() -> list[str]:
    """Names of the recall checkpoints the hub can find (shipped first)."""
    try:
        from longstream.pipelines.hub import list_models

        names = sorted({e.name for e in list_models("recall")})
    except Exception:  # noqa: BLE001 - the demo must still build without a hub
        names = []
    return names or ["recall/hybrid-mqar"]


def _load(checkpoint: str):
    from .model import from_pretrained

    return from_pretrained(checkpoint)


MODELS = ModelCache(_load, maxsize=4)  # loaded once per checkpoint name, failed loads not kept


def _render(tokens: list[int], positions: list[int], width: int = 24) -> str:
    """A short view of the end of the sequence with the scored positions marked."""
    if not positions:
        return ""
    lo = max(0, positions[0] - width)
    parts = []
    for i in range(lo, min(len(tokens), positions[-1] + 1)):
        parts.append(f"[{tokens[i]}]" if i in positions else str(tokens[i]))
    return ("... " if lo else "") + " ".join(parts)


def run_example(checkpoint: str, multiplier: float, depth: float, seed: int,
                history: list[dict[str, Any]] | None) -> tuple[str, list[dict[str, Any]]]:
    """Generate one example at ``multiplier`` x the training length and report prediction vs target."""
    from .data import DEPTH_TASKS, generate
    from .evaluate import score

    history = list(history or [])
    seed = number_input(seed, "example seed", lo=0, hi=MAX_SEED, integer=True)
    multiplier = number_input(multiplier, "length multiplier", lo=0.001, hi=65536)
    depth = number_input(depth, "needle depth", lo=0.0, hi=1.0)
    if not checkpoint:
        raise UserError("no checkpoint chosen; pick one from the checkpoint list")
    model = MODELS.get(checkpoint)
    cfg = model.cfg
    length = max(1, int(round(float(multiplier) * cfg.data.seq_len)))
    if length > 65536:
        raise UserError(f"{length} tokens is more than the demo allows (65536); pick a smaller multiplier")
    d = float(depth) if cfg.data.task in DEPTH_TASKS else None
    from .evaluate import eval_data

    x, y = generate(eval_data(cfg), 1, seq_len=length, depth=d, seed=int(seed))
    p, nb = model.predict_at(x, y)
    sel = (y[0] != -100).nonzero().squeeze(-1).tolist()
    tgt = y[0, sel].tolist()
    pred = p[0, sel].tolist()
    a, u = score(p, y, cfg.data.task)
    ok = a / max(u, 1)
    history.append({"checkpoint": checkpoint, "length": length, "correct": ok})
    lines = [
        f"task {cfg.data.task}, trained at {cfg.data.seq_len} tokens; this input: {length} tokens"
        + (f", needle depth {d:.2f}" if d is not None else ""),
        f"target:     {tgt[:32]}",
        f"prediction: {pred[:32]}",
        f"score: {ok:.3f}  ({'exact match' if cfg.data.task in ('passkey', 'multikey', 'vartrack') else 'per position'})",
        f"streaming state held: {nb / 1024:.1f} KiB per sequence",
        f"end of input (scored tokens in brackets): {_render(x[0].tolist(), sel)}",
        f"requests this session: {len(history)}",
    ]
    return "\n".join(lines), history


def build_demo(checkpoint: str | None = None):
    """The recall tab as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    names = shipped_checkpoints()
    preferred = [n for n in ("recall/mamba-retrieval-passkey", "recall/hybrid-mqar") if n in names]
    default = checkpoint or (preferred[0] if preferred else names[0])
    default_mult = 16 if default.endswith("retrieval-passkey") else 1

    def run(ckpt, mult, depth, seed, history):
        return run_example(ckpt, mult, depth, seed, history)

    with gr.Blocks(title=DEMO_TITLE) as demo:
        gr.Markdown(
            "### Long-context recall\n"
            "Each checkpoint was trained on one synthetic task (MQAR, induction heads, passkey, ...) at a "
            "fixed length. Pick a length as a multiple of the training length and, for needle tasks, where "
            "the needle sits; a fresh example is generated, streamed through the model, and its prediction "
            "is compared with the target."
        )
        history = gr.State([])
        with gr.Row():
            ckpt = gr.Dropdown(names, value=default, label="checkpoint", elem_id="recall-checkpoint")
            mult = gr.Dropdown([1, 4, 16, 64], value=default_mult, label="length (x training length)",
                               elem_id="recall-mult")
        with gr.Row():
            depth = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="needle depth", elem_id="recall-depth")
            seed = gr.Number(value=0, precision=0, label="example seed", elem_id="recall-seed")
        btn = gr.Button("Generate and predict", variant="primary", elem_id="recall-run")
        out = gr.Textbox(label="prediction vs target", lines=8, elem_id="recall-output")
        connect(btn.click, run, [ckpt, mult, depth, seed, history], [out, history], api_name="recall_predict")
        examples = [[default, default_mult, 0.5, 0], [default, 64, 0.1, 1]]
        if "recall/hybrid-mqar" in names and default != "recall/hybrid-mqar":
            examples.append(["recall/hybrid-mqar", 1, 0.5, 0])
        gr.Examples(examples, [ckpt, mult, depth, seed])
    return demo
