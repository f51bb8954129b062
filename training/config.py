"""Every hyperparameter, with its default; each recipe's own defaults are its entry in registry.py.

The CLI overrides any of them, and the manifest records the values a model was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import UserError
from .registry import RECIPES

LADDER = tuple(name for name, entry in RECIPES.items() if entry.ladder)
# The model name each ladder rung is saved under (the service serves these by default).
LADDER_NAMES = {name: RECIPES[name].model_name for name in LADDER}
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


def resolve(recipe: str, **overrides) -> Hyperparameters:
    """The recipe's defaults, with the options the user gave (None means "not given")."""
    entry = RECIPES[recipe]
    values = dict(entry.defaults)
    given = {k: v for k, v in overrides.items() if v is not None}
    if entry.features is not None and given.get("transfer_mode") == "features":
        values.update(entry.features)
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
