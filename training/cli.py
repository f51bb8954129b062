"""`python -m training`: train, evaluate, run the ladder, export, visualize, and the demo.

TensorFlow is imported only by the commands that need it, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from service.package import MODEL_NAME_RULE, is_model_name

from .config import LADDER, TRANSFER_MODES, Hyperparameters
from .errors import UserError
from .registry import RECIPES

DEMO_DATA = Path("data/demo")


def _image_size(text: str) -> tuple[int, int]:
    """`180` or `180x160` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in pixels, like 180 or 180x160, not {text!r}")
    return parts[0], parts[1]


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
        return value

    return parse


def _model_name(text: str) -> str:
    if not is_model_name(text):  # names become BentoML tags
        raise argparse.ArgumentTypeError(f"model names use {MODEL_NAME_RULE}, not {text!r}")
    return text


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DIR", help="image folder (DIR/train/<class>/*, optional validation/ and test/); "
                        "for mnist an .npz file (default: keras.datasets.mnist)")
    source.add_argument("--demo", action="store_true", help=f"use the built-in demo dataset ({DEMO_DATA}, generated if missing)")
    group.add_argument("--models-dir", default="models", metavar="DIR", help="where model folders are written (default: %(default)s)")
    group.add_argument("--overwrite", action="store_true", help="train again a model that is already trained")


def _add_hyperparameters(parser: argparse.ArgumentParser, *, learning_rate: bool = True) -> None:
    group = parser.add_argument_group("hyperparameters (default: the recipe's, see README)")
    group.add_argument("--image-size", type=_image_size, metavar="SIZE", help="input size, SIZE or HEIGHTxWIDTH (default 180; mnist 28, basenet 32)")
    group.add_argument("--color-mode", choices=("rgb", "grayscale"), help="image channels (default rgb; mnist grayscale)")
    group.add_argument("--batch-size", type=_positive(int), metavar="N")
    group.add_argument("--epochs", type=_positive(int), metavar="N")
    if learning_rate:
        group.add_argument("--learning-rate", type=_positive(float), metavar="LR", help="default 1e-3; finetune 1e-5")
        group.add_argument("--optimizer", choices=("rmsprop", "adam"))
        group.add_argument("--lr-schedule", choices=("constant", "cosine"),
                           help="constant (default), or cosine: from the learning rate down towards 0 over the epochs")
    group.add_argument("--seed", type=int, help="seed of every random choice (default 1337)")
    group.add_argument("--patience", type=_positive(int), metavar="N", help="stop after N epochs without a better val_loss (default: off)")
    group.add_argument("--validation-split", type=float, metavar="F", help="fraction of train held out when there is no validation split (default 0.2; mnist 0.1)")
    group.add_argument("--dropout", type=float, metavar="F", help="dropout before the classifier (default: augmented 0.5, transfer 0.5, scratch 0)")
    pretrained = ", ".join(name for name, entry in RECIPES.items() if entry.pretrained)
    base = parser.add_argument_group(f"pretrained base ({pretrained})")
    base.add_argument("--base", choices=("mobilenet_v2", "vgg16", "resnet50"), help="keras.applications base (default mobilenet_v2)")
    base.add_argument("--alpha", type=float, help="MobileNetV2 width multiplier (default 0.35)")
    base.add_argument("--base-weights", metavar="imagenet|none|PATH", help="ImageNet weights (downloaded or cached), random, or a local weights file (default imagenet)")
    base.add_argument("--transfer-mode", choices=TRANSFER_MODES, help="augmented: end-to-end with augmentation, frozen base (default); "
                      "features: run the base once, train the head on cached features")
    base.add_argument("--unfreeze", type=int, metavar="N", help="finetune: unfreeze the base's last N layers, BatchNormalization excepted "
                      "(default: all of MobileNetV2, 4 of VGG16 and ResNet50)")


# Every Hyperparameters field; those a command has no option for (augment: the recipe's) are not overridden.
HYPERPARAMETERS = tuple(field.name for field in dataclasses.fields(Hyperparameters))


def _overrides(args) -> dict:
    return {key: getattr(args, key) for key in HYPERPARAMETERS if hasattr(args, key)}


def _data(args) -> str | None:
    if args.demo:
        from .demo_data import generated_dataset

        generated_dataset(DEMO_DATA, what="the demo dataset", keep_unrecorded=True)
        return str(DEMO_DATA)
    return args.data


def cmd_train(args) -> None:
    from .config import resolve
    from .manifest import read_manifest, summary_line
    from .train import train

    overrides = _overrides(args)
    entry = RECIPES[args.recipe]
    name = args.name or entry.model_name
    source = None
    if entry.starts_from:
        source = Path(args.source or Path(args.models_dir) / RECIPES[entry.starts_from].model_name)
        if overrides["image_size"] is None:
            shape = read_manifest(source)["input"]
            overrides["image_size"] = (shape["height"], shape["width"])
    manifest = train(args.recipe, resolve(args.recipe, **overrides), data=_data(args), name=name,
                     models_dir=args.models_dir, source=source, overwrite=args.overwrite)
    print(summary_line(manifest))


def cmd_pipeline(args) -> None:
    from .pipeline import run_pipeline

    run_pipeline(_data(args), models_dir=args.models_dir, prefix=args.prefix, overwrite=args.overwrite,
                 export=not args.no_export, register_model=not args.no_register, **_overrides(args))


def cmd_evaluate(args) -> None:
    from .reevaluate import reevaluate

    reevaluate(Path(args.model_dir), data=args.data)


def cmd_export(args) -> int:
    from .export import export_line, export_model
    from .manifest import MANIFEST

    def export(model_dir: Path) -> None:
        print(export_line(export_model(model_dir, data=args.data, register_model=not args.no_register, opset=args.opset)))

    if args.model_dir and not args.all:
        export(Path(args.model_dir))
        return 0
    if not args.all:
        raise UserError("name a model folder (python -m training export models/<name>) or pass --all")
    models_dir = Path(args.models_dir)
    dirs = sorted(p.parent for p in models_dir.glob(f"*/{MANIFEST}"))
    if not dirs:
        raise UserError(f"{models_dir} holds no trained models")
    failed = 0
    for model_dir in dirs:  # one model's failure does not stop the others
        try:
            export(model_dir)
        except UserError as err:
            print(f"error: {model_dir.name}: {err}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def cmd_reproduce(args) -> None:
    from .reproduce import reproduce

    reproduce(data=args.data, mnist=args.mnist, base_weights=args.base_weights, models_dir=args.models_dir,
              only=args.only.split(",") if args.only else None)


def cmd_visualize(args) -> None:
    from .visualize import visualize

    visualize(Path(args.model_dir), Path(args.image), args.label)


def cmd_demo_data(args) -> None:
    from .demo_data import generate_demo_dataset

    print(f"demo dataset written to {generate_demo_dataset(args.directory, seed=args.seed)}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(models_dir=Path(args.models_dir), data=Path(args.data), epochs=args.epochs, base_weights=args.base_weights)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train Keras image classifiers from image folders (or MNIST), evaluate and export them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train one recipe", description="Train one recipe into MODELS_DIR/NAME.")
    p.add_argument("recipe", choices=RECIPES, help=" | ".join(RECIPES))
    p.add_argument("--name", type=_model_name,
                   help=f"model name (default: the recipe's: {', '.join(entry.model_name for entry in RECIPES.values())})")
    p.add_argument("--from", dest="source", metavar="MODEL_DIR", help="finetune: the trained transfer model to start from (default MODELS_DIR/transfer)")
    _add_data_options(p)
    _add_hyperparameters(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("pipeline", help=f"train and export the ladder: {', '.join(LADDER)}",
                            description=f"Train {', '.join(LADDER[:-1])} and {LADDER[-1]} in order, exporting each after "
                                        "training (as `export` does: SavedModel, ONNX, parity check, BentoML store); rungs "
                                        "already trained with the same options, and exports already of the model trained, "
                                        "are skipped.")
    p.add_argument("--prefix", default="", type=lambda s: s and _model_name(s), help="prefix of the four model names (default none)")
    p.add_argument("--no-export", action="store_true", help="train only; export later with `export --all`")
    p.add_argument("--no-register", action="store_true", help="export, but do not register in the BentoML model store")
    _add_data_options(p)
    _add_hyperparameters(p, learning_rate=False)
    p.set_defaults(func=cmd_pipeline)

    p = commands.add_parser("evaluate", help="evaluate a trained model on its test split",
                            description="Evaluate MODEL_DIR's model on the test split of its dataset (or of --data).")
    p.add_argument("model_dir", help="a trained model folder, e.g. models/scratch")
    p.add_argument("--data", metavar="DIR", help="dataset to evaluate on (default: the one it was trained on)")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("export", help="export trained models to SavedModel and ONNX, check parity, register with BentoML",
                            description="Export MODEL_DIR (or every model with --all) to SavedModel and ONNX, check that ONNX Runtime "
                                        "computes what Keras computes, and register the package in the BentoML model store.")
    p.add_argument("model_dir", nargs="?", help="a trained model folder, e.g. models/finetuned")
    p.add_argument("--all", action="store_true", help="export every trained model under --models-dir; a model that fails "
                   "is reported in one line and the others are exported (exit status 2 if any failed)")
    p.add_argument("--models-dir", default="models", metavar="DIR", help="(default: %(default)s)")
    p.add_argument("--data", metavar="DIR", help="dataset for the parity check (default: the one the model was trained on)")
    p.add_argument("--opset", type=_positive(int), default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--no-register", action="store_true", help="do not register the package in the BentoML model store")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("reproduce", help="train and export the seed documents' ladder on cats vs dogs, and MNIST",
                            description="Train and export cvd-scratch, cvd-augmented, cvd-transfer-features, cvd-transfer, "
                                        "cvd-finetuned and mnist (rungs already trained with the same options are reused). "
                                        "`make reproduce` then serves them and writes docs/results.md.")
    p.add_argument("--data", required=True, metavar="DIR", help="cats_vs_dogs_small (train/validation/test)")
    p.add_argument("--mnist", metavar="NPZ", help="mnist.npz (default: keras.datasets.mnist)")
    p.add_argument("--base-weights", required=True, metavar="PATH|imagenet", help="MobileNetV2 alpha 0.35 ImageNet weights")
    p.add_argument("--only", metavar="NAMES", help="comma-separated rungs to train (default: all, in order)")
    p.add_argument("--models-dir", default="models", metavar="DIR", help="(default: %(default)s)")
    p.set_defaults(func=cmd_reproduce)

    p = commands.add_parser("visualize", help="see inside a trained model: activations, filter patterns, Grad-CAM, one HTML page",
                            description="For one image, write MODEL_DIR/report/: the activations of every convolution and "
                                        "pooling layer, the filter patterns of the first convolution of each block, Grad-CAM "
                                        "heatmaps, and index.html showing them with the training curves and test metrics.")
    p.add_argument("model_dir", help="a trained model folder, e.g. models/scratch")
    p.add_argument("--image", required=True, metavar="FILE", help="the image to look at (JPEG, PNG, BMP or GIF)")
    p.add_argument("--label", metavar="CLASS", help="also show the Grad-CAM heatmap of this class (default: the predicted class only)")
    p.set_defaults(func=cmd_visualize)

    p = commands.add_parser("demo-data", help="write the generated demo dataset to a folder")
    p.add_argument("directory", help="folder to write (DIR/train, DIR/validation, DIR/test)")
    p.add_argument("--seed", type=int, default=1337, help="(default: %(default)s)")
    p.set_defaults(func=cmd_demo_data)

    p = commands.add_parser("demo", help="the whole pipeline on the built-in demo dataset, in a few minutes",
                            description="Generate the demo dataset, train the ladder on small images, export and check the models.")
    p.add_argument("--data", default=str(DEMO_DATA), help="where the demo dataset is (generated if missing; default: %(default)s)")
    p.add_argument("--models-dir", default="models", help="(default: %(default)s)")
    p.add_argument("--epochs", type=_positive(int), default=None, help="epochs per rung (default: the demo's own, a few)")
    p.add_argument("--base-weights", metavar="imagenet|none|PATH", help="weights of the pretrained base (default imagenet, "
                   "random when they cannot be had)")
    p.set_defaults(func=cmd_demo)
    return parser


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up notes (no CUDA driver here, oneDNN on) kept off the terminal.

    TensorFlow writes them to file descriptor 2 before its log level applies. An import error still
    raises, with its traceback, once stderr is back.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not cmd_demo_data:
        _import_tensorflow_quietly()
    try:
        return args.func(args) or 0  # a command returns 2 when it reported its own errors
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
