"""Every recipe, in one table: how it builds its model and what else a run needs to know of it.

The CLI's choices and help, each recipe's hyperparameter defaults (config.resolve), the ladder and
its model names, which options tell two runs apart (runs.py) and how a run trains (train.py) all
come from RECIPES. No TensorFlow at import: the CLI reads this table to answer `--help` at once,
so the builders import Keras when they are called.

Adding a recipe: write its model function in training/recipes.py, `build_<name>(input_shape,
num_classes) -> keras.Model` (the core contract is that module's docstring), and add one entry:

    "<name>": Recipe(convnet("build_<name>"), model_name="<name>", defaults={"epochs": 20}),

A recipe that needs more than the input shape and the number of classes (a pretrained base, a
trained model to start from) has a builder of its own instead, like `transfer` and `finetune`:
`build(hp, classes, start) -> Built`, importing Keras inside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import UserError
from .manifest import load_keras_model, read_manifest

if TYPE_CHECKING:
    import keras

    from .config import Hyperparameters

RESCALING = "Rescaling(1/255)"


@dataclass
class Built:
    """What a recipe builds: the inference core, how it preprocesses, and its pretrained base."""

    core: keras.Model
    preprocessing: str
    base: dict | None = None


@dataclass(frozen=True)
class Start:
    """What a run gives a builder beyond its hyperparameters and classes."""

    source: Path | None = None  # the trained model a recipe with `starts_from` starts from
    fallback_to_random: bool = False  # random base weights when ImageNet's cannot be had


Builder = Callable[["Hyperparameters", list, Start], Built]


@dataclass(frozen=True)
class Recipe:
    build: Builder
    model_name: str  # what its model is saved and served as, unless the run names it
    defaults: dict = field(default_factory=dict)  # what differs from the Hyperparameters defaults
    # Hyperparameters that only the recipes listing them use: for any other recipe, runs that differ
    # only in them are the same run.
    options: tuple[str, ...] = ()
    pretrained: bool = False  # built on a keras.applications base (the CLI's "pretrained base" options)
    # The defaults when it trains its head on the base's features (--transfer-mode features); None: it cannot.
    features: dict | None = None
    starts_from: str | None = None  # the recipe whose trained model it starts from (--from)
    data: str = "directory"  # or "mnist": an .npz of keras.datasets.mnist's arrays, not an image folder
    ladder: bool = False  # a rung of the seed documents' ladder (pipeline, demo), in this table's order

    def on_features(self, hp: Hyperparameters) -> bool:
        return self.features is not None and hp.transfer_mode == "features"


def convnet(function: str, *options: str) -> Builder:
    """A recipe whose model is training/recipes.py's `function(input_shape, num_classes, **options)`,
    rescaling plain pixels itself; `options` are hyperparameters it takes by name."""
    def build(hp: Hyperparameters, classes: list, start: Start) -> Built:
        from . import recipes

        kwargs = {option: getattr(hp, option) for option in options}
        return Built(getattr(recipes, function)(hp.input_shape, len(classes), **kwargs), RESCALING)

    return build


def transfer(hp: Hyperparameters, classes: list, start: Start) -> Built:
    """A frozen keras.applications base with a new head (recipes.build_transfer)."""
    from .bases import build_base
    from .recipes import build_transfer

    if hp.color_mode != "rgb":
        raise UserError("pretrained bases take RGB images: leave --color-mode unset")
    base, weights = build_base(hp.base, hp.input_shape, hp.base_weights, alpha=hp.alpha, fallback_to_random=start.fallback_to_random)
    record = {"architecture": hp.base, "alpha": hp.alpha if hp.base == "mobilenet_v2" else None,
              "weights": weights.weights, "weights_source": weights.source, "unfrozen_layers": 0,
              "layers": len(base.layers), "parameters": base.count_params()}
    core = build_transfer(hp.input_shape, len(classes), base, hp.base, dropout=hp.dropout)
    return Built(core, f"{hp.base}.preprocess_input", record)


def finetune(hp: Hyperparameters, classes: list, start: Start) -> Built:
    """A trained transfer model with the top of its base unfrozen (recipes.unfreeze_top)."""
    from .recipes import core_of, default_unfreeze, unfreeze_top

    if start.source is None:
        raise UserError("fine-tuning starts from a trained transfer model: pass --from models/<name>")
    model, manifest = _source_model(start.source, classes, hp)
    core = core_of(model)
    count = hp.unfreeze if hp.unfreeze is not None else default_unfreeze(core, manifest["base"]["architecture"])
    unfrozen = unfreeze_top(core, count)
    record = {**manifest["base"], "unfrozen_layers": count, "unfrozen": unfrozen, "from_model": manifest["name"]}
    return Built(core, f"{manifest['base']['architecture']}.preprocess_input", record)


def _source_model(source: Path, classes: list[str], hp: Hyperparameters) -> tuple[keras.Model, dict]:
    """The trained transfer model that fine-tuning starts from, checked against this run."""
    manifest = read_manifest(source)
    if manifest.get("base") is None:
        raise UserError(f"{source} has no pretrained base to fine-tune (recipe {manifest.get('recipe')}); train the transfer recipe first")
    if manifest["classes"] != classes:
        raise UserError(f"{source} was trained on classes {manifest['classes']}, but this data has {classes}")
    shape = [manifest["input"][k] for k in ("height", "width", "channels")]
    if shape != list(hp.input_shape):
        raise UserError(f"{source} takes {shape[0]}x{shape[1]}x{shape[2]} images, not {'x'.join(map(str, hp.input_shape))}: leave --image-size unset")
    return load_keras_model(source), manifest


def with_source_base(hp: Hyperparameters, source: Path) -> Hyperparameters:
    """A recipe that starts from a trained model keeps its base: record the source's architecture
    and alpha, not the options'."""
    base = read_manifest(source).get("base")
    if base is None:
        return hp  # _source_model says why this cannot be fine-tuned
    return dataclasses.replace(hp, base=base["architecture"], alpha=hp.alpha if base.get("alpha") is None else base["alpha"])


# The defaults follow the seed documents (Deep Learning with Python, ch. 8, and its MNIST convnet).
# The ladder's recipes come first, in its order.
RECIPES: dict[str, Recipe] = {
    "scratch": Recipe(convnet("build_scratch", "dropout"), model_name="scratch", ladder=True),
    "augmented": Recipe(convnet("build_scratch", "dropout"), model_name="augmented", ladder=True,
                        defaults={"epochs": 100, "augment": True, "dropout": 0.5}),
    # The book: 50 epochs end-to-end with augmentation, 20 with fast feature extraction. 224x224, not
    # the book's 180: MobileNetV2's ImageNet weights were trained at 224 (the runs: docs/results.md).
    "transfer": Recipe(transfer, model_name="transfer", ladder=True, pretrained=True,
                       defaults={"image_size": (224, 224), "epochs": 50, "augment": True, "dropout": 0.5},
                       options=("base", "alpha", "base_weights", "transfer_mode"),
                       # each image seen once, unaugmented: no augmentation, fewer epochs
                       features={"epochs": 20, "augment": False}),
    "finetune": Recipe(finetune, model_name="finetuned", ladder=True, pretrained=True, starts_from="transfer",
                       defaults={"epochs": 30, "learning_rate": 1e-5, "augment": True, "dropout": 0.5},
                       options=("unfreeze",)),
    "mnist": Recipe(convnet("build_mnist"), model_name="mnist", data="mnist",
                    defaults={"image_size": (28, 28), "color_mode": "grayscale", "batch_size": 64, "epochs": 5,
                              "validation_split": 0.1}),
    "basenet": Recipe(convnet("build_basenet"), model_name="basenet",
                      defaults={"image_size": (32, 32), "epochs": 20, "optimizer": "adam"}),
}


def recipe_named(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown recipe {name!r}") from None
