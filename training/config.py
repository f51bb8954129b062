"""Every hyperparameter, with each recipe's defaults in one table.

The defaults follow the seed documents (Deep Learning with Python, ch. 8, and its MNIST convnet);
the CLI overrides any of them, and the manifest records the values a model was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import UserError

RECIPES = ("scratch", "augmented", "transfer", "finetune", "mnist", "basenet")
LADDER = ("scratch", "augmented", "transfer", "finetune")
# The model name each ladder rung is saved under (the service serves these by default).
LADDER_NAMES = {"scratch": "scratch", "augmented": "augmented", "transfer": "transfer", "finetune": "finetuned"}
TRANSFER_MODES = ("augmented", "features")


@dataclass
class Hyperparameters:
    image_size: tuple[int, int] = (180, 180)
    color_mode: str = "rgb"  # or "grayscale"
    batch_size: int = 32
    epochs: int = 30
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": from learning_rate down to 0 over the epochs, epoch by epoch
    optimizer: str = "rmsprop"
    seed: int = 1337
    patience: int | None = None  # early stopping on val_loss; None trains every epoch
    validation_split: float = 0.2  # used only when the data has no validation split
    augment: bool = False
    dropout: float = 0.0
    # pretrained bases (transfer, finetune)
    base: str = "mobilenet_v2"
    alpha: float = 0.35
    base_weights: str = "imagenet"
    transfer_mode: str = "augmented"
    unfreeze: int | None = None  # finetune; None: the base's default, see recipes.default_unfreeze

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, 1 if self.color_mode == "grayscale" else 3)

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["image_size"] = list(self.image_size)
        return values


# Per recipe, what differs from the dataclass defaults above.
RECIPE_DEFAULTS: dict[str, dict] = {
    "scratch": {},
    "augmented": {"epochs": 100, "augment": True, "dropout": 0.5},
    # The book: 50 epochs end-to-end with augmentation, 20 with fast feature extraction (see resolve()).
    # 224x224, not the book's 180: the ImageNet weights of MobileNetV2 were trained at 224, and on cats
    # vs dogs feature extraction reaches 96.2% at 224 against 94.2% at 180 (docs/results.md).
    "transfer": {"image_size": (224, 224), "epochs": 50, "augment": True, "dropout": 0.5},
    "finetune": {"epochs": 30, "learning_rate": 1e-5, "augment": True, "dropout": 0.5},
    "mnist": {"image_size": (28, 28), "color_mode": "grayscale", "batch_size": 64, "epochs": 5, "validation_split": 0.1},
    "basenet": {"image_size": (32, 32), "epochs": 20, "optimizer": "adam"},
}


def resolve(recipe: str, **overrides) -> Hyperparameters:
    """The recipe's defaults, with the options the user gave (None means "not given")."""
    values = dict(RECIPE_DEFAULTS[recipe])
    given = {k: v for k, v in overrides.items() if v is not None}
    if recipe == "transfer" and given.get("transfer_mode") == "features":
        # Fast feature extraction sees each image once, unaugmented: no augmentation, fewer epochs.
        values.update(epochs=20, augment=False)
    values.update(given)
    _check_ranges(values)
    return Hyperparameters(**values)


# The largest seed every generator keras.utils.set_random_seed seeds takes (numpy's: 32 bits).
MAX_SEED = 2**32 - 1


def _check_ranges(values: dict) -> None:
    """Values the CLI's types let through but the libraries refuse with a traceback."""
    dropout = values.get("dropout", 0.0)
    if not 0 <= dropout < 1:
        raise UserError(f"--dropout {dropout:g} is not a fraction from 0 (none) to below 1")
    seed = values.get("seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is not between 0 and {MAX_SEED}")
