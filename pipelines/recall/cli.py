"""``longstream recall ...``: the uniform verbs (train / evaluate / predict), built by ``longstream.pipelines.common``."""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config, evaluate, train


def main(argv: list[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain=DOMAIN,
        presets=config.PRESETS,
        train=train.train,
        evaluate=evaluate.evaluate,
        predict=evaluate.predict,
        description="Recall suite: MQAR, induction heads, selective copying, passkey, multi-key needle and "
        "variable tracking on generated data, with and without streaming memory.",
    )


if __name__ == "__main__":
    raise SystemExit(main())
