"""``longstream recall ...``: the uniform verbs (train / evaluate / predict), built by ``longstream.pipelines.common``."""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config, evaluate, train

DESCRIPTION = ("Recall suite: MQAR, induction heads, selective copying, passkey, multi-key needle and "
               "variable tracking on generated data, with and without streaming memory.")


def main(argv: list[str] | None = None) -> int:
    """Run ``longstream recall <verb>``; returns the exit code (2 for a user error)."""
    verbs = {"train": train.train, "evaluate": evaluate.evaluate, "predict": evaluate.predict}
    return run_pipeline_cli(argv, domain=DOMAIN, presets=config.PRESETS, description=DESCRIPTION, **verbs)


if __name__ == "__main__":
    raise SystemExit(main())
