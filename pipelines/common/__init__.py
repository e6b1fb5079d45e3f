"""The shared shell every pipeline composes: small modules, no trainer class.

Modules (each named for what it holds):

- :mod:`.errors` — :class:`UserError`, the one exception a user can cause (exit code 2).
- :mod:`.finite` — numeric inputs checked in the model's dtype (:func:`to_model_dtype`), model
  outputs checked (:func:`check_finite_output`), strict JSON (:func:`dumps_strict`).
- :mod:`.paths` — :data:`REPO_ROOT`, :data:`CHECKPOINTS_DIR`, :data:`DEMOS_DIR` (in the checkout or
  the installed package), :func:`check_out_dir`.
- :mod:`.config` — dataclass configs to/from dicts, typed dotted overrides, :func:`build_backbone`.
- :mod:`.reproducibility` — :func:`seed_everything`, :func:`set_threads`, :func:`pick_device`.
- :mod:`.optim` — :func:`param_groups`, :func:`warmup_cosine`, :func:`make_scheduler`, TSLib's
  :func:`tslib_lr` / :func:`make_epoch_scheduler`, :class:`EarlyStopping`.
- :mod:`.progress` — :func:`progress` bars, :class:`MetricLogger`, :func:`quiet` / :func:`is_quiet`.
- :mod:`.distributed` — ``torchrun`` helpers (:func:`init_distributed`, :func:`wrap_ddp`, ...).
- :mod:`.train_state` — :func:`save_train_state` / :func:`load_train_state` (resume).
- :mod:`.loop` — :class:`TrainRun` (the resume / fresh-run / save / cleanup frame of a run),
  :func:`optimizer_step`, :func:`data_fingerprint`.
- :mod:`.checkpoint` — :func:`save_pretrained` / :func:`load_pretrained` / :func:`load_weights`.
- :mod:`.cli` — :func:`run_pipeline_cli` (the uniform verbs), :func:`run_cli_guarded`, :func:`print_json`.
- :mod:`.heads` — masked pooling (:class:`MaskedPool`, :class:`AttentionPool`) and heads
  (:class:`SequenceClassifier`, :class:`TokenClassifier`, :class:`RegressionHead`).
- :mod:`.batching` — :func:`pad_sequences`, :func:`lengths_to_mask`, :class:`LengthBucketSampler`.
- :mod:`.streaming` — :func:`stream_evaluate`: one very long input through ``memory.StreamRunner``.
- :mod:`.metrics` — accuracy, top-k, macro-F1, MCC, confusion matrix, accuracy by length.
- :mod:`.demo_helpers` — :func:`gradio_errors`, :func:`connect`, :func:`number_input`,
  :class:`ModelCache` for ``demo.py``.
- :mod:`.inputs` — user files in and out: :func:`as_file`, :func:`read_text_file` (no
  ``UnicodeDecodeError``), :func:`resolve_out` / :func:`derived_out` / :func:`write_out` (the ``--out`` rule).
- :func:`sha256_file` and :func:`atomic_write_bytes` are re-exported from
  :mod:`longstream.backbones.io`, the one owner of files on disk.

Everything public is re-exported here, so ``from longstream.pipelines.common import X``
works for every name in ``__all__``. See ``pipelines/CONTRACT.md``.
"""

from longstream.backbones.io import atomic_write_bytes, sha256_file

from .checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_errors,
    code_version,
    load_pretrained,
    load_weights,
    read_checkpoint_config,
    save_pretrained,
)
from .cli import make_parser, print_json, run_cli_guarded, run_pipeline_cli, to_json
from .config import (
    ConfigError,
    apply_overrides,
    build_backbone,
    config_from_dict,
    config_to_dict,
    parse_dotted_args,
    validate_config,
)
from .distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    launched_by_torchrun,
    shard_indices,
    unwrap,
    wrap_ddp,
)
from .errors import UserError
from .finite import (
    FLOAT32_MAX,
    ORDINARY_INPUT_MAX,
    NonFiniteOutputError,
    NonFiniteValueError,
    cell_locator,
    check_finite_output,
    check_finite_result,
    dumps_strict,
    find_non_finite,
    to_model_dtype,
)
from .loop import RESUME_MAY_DIFFER, TrainingDiverged, TrainRun, data_fingerprint, optimizer_step
from .optim import EarlyStopping, make_epoch_scheduler, make_scheduler, param_groups, tslib_lr, warmup_cosine
from .paths import CHECKPOINTS_DIR, DEMOS_DIR, REPO_ROOT, check_out_dir
from .progress import MetricLogger, is_quiet, progress, quiet
from .reproducibility import pick_device, seed_everything, set_threads
from .train_state import load_train_state, save_train_state

# isort: split
# --- kit: shared parts for new pipelines (heads, batching, streaming, metrics, demo helpers) ---
from .batching import LengthBucketSampler, lengths_to_mask, mask_to_lengths, pad_sequences, padding_fraction
from .demo_helpers import ModelCache, connect, file_path, gradio_errors, number_input, page_message
from .heads import (
    POOLS,
    AttentionPool,
    MaskedPool,
    RegressionHead,
    SequenceClassifier,
    TokenClassifier,
    ctc_greedy_decode,
    masked_max,
    masked_mean,
    pool_cls,
    pool_last,
)
from .inputs import (
    as_file,
    check_text_file,
    derived_out,
    read_json_spec,
    read_text_file,
    resolve_out,
    write_out,
)
from .metrics import (
    accuracy,
    accuracy_by_length,
    classification_report,
    confusion_matrix,
    macro_f1,
    mcc,
    top_k_accuracy,
)
from .streaming import StreamResult, StreamSegment, iter_stream, stream_evaluate

__all__ = [
    "RESUME_MAY_DIFFER",
    "CHECKPOINT_FORMAT",
    "REPO_ROOT",
    "CHECKPOINTS_DIR",
    "DEMOS_DIR",
    "DistEnv",
    "EarlyStopping",
    "MetricLogger",
    "TrainRun",
    "TrainingDiverged",
    "UserError",
    "all_reduce_mean",
    "apply_overrides",
    "atomic_write_bytes",
    "barrier",
    "build_backbone",
    "check_out_dir",
    "cleanup_distributed",
    "code_version",
    "config_from_dict",
    "config_to_dict",
    "data_fingerprint",
    "init_distributed",
    "is_quiet",
    "launched_by_torchrun",
    "load_pretrained",
    "load_train_state",
    "load_weights",
    "make_epoch_scheduler",
    "make_parser",
    "make_scheduler",
    "optimizer_step",
    "param_groups",
    "parse_dotted_args",
    "pick_device",
    "print_json",
    "progress",
    "quiet",
    "read_checkpoint_config",
    "run_cli_guarded",
    "run_pipeline_cli",
    "save_pretrained",
    "save_train_state",
    "seed_everything",
    "set_threads",
    "sha256_file",
    "shard_indices",
    "tslib_lr",
    "unwrap",
    "warmup_cosine",
    "wrap_ddp",
    # --- finite ---
    "FLOAT32_MAX",
    "ORDINARY_INPUT_MAX",
    "NonFiniteOutputError",
    "NonFiniteValueError",
    "cell_locator",
    "check_finite_output",
    "check_finite_result",
    "dumps_strict",
    "find_non_finite",
    "to_json",
    "to_model_dtype",
    # --- kit ---
    "LengthBucketSampler",
    "lengths_to_mask",
    "mask_to_lengths",
    "pad_sequences",
    "padding_fraction",
    "POOLS",
    "AttentionPool",
    "MaskedPool",
    "RegressionHead",
    "SequenceClassifier",
    "TokenClassifier",
    "ctc_greedy_decode",
    "masked_max",
    "masked_mean",
    "pool_cls",
    "pool_last",
    "StreamResult",
    "StreamSegment",
    "iter_stream",
    "stream_evaluate",
    "accuracy",
    "accuracy_by_length",
    "classification_report",
    "confusion_matrix",
    "macro_f1",
    "mcc",
    "top_k_accuracy",
    "ModelCache",
    "file_path",
    "gradio_errors",
    "connect",
    "number_input",
    "page_message",
    # --- user errors: inputs, --out, config checks ---
    "ConfigError",
    "as_file",
    "check_text_file",
    "checkpoint_errors",
    "derived_out",
    "read_json_spec",
    "read_text_file",
    "resolve_out",
    "validate_config",
    "write_out",
]
