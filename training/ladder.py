"""The seed documents' accuracy ladder: each rung's model name, recipe, options beyond the recipe's
defaults, what the seed documents call it and their test accuracy for it.

`training reproduce` trains these rungs; `loadtests.accuracy` measures them through the service
and sets them beside the seed's figures. No TensorFlow here. Why each option is what it is, with
the runs that chose it: docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The input size of feature extraction and fine-tuning, chosen on the validation split (docs/results.md).
LARGE = (288, 288)


@dataclass(frozen=True)
class Rung:
    name: str
    recipe: str
    seed_name: str  # what the seed documents call the rung
    seed_accuracy: float  # their test accuracy
    options: dict = field(default_factory=dict)


RUNGS = (
    Rung("cvd-scratch", "scratch", "convnet from scratch", 0.72),
    # The book's 100 epochs, with a cosine schedule rather than its constant rate.
    Rung("cvd-augmented", "augmented", "from scratch, with data augmentation", 0.82, {"epochs": 100, "lr_schedule": "cosine"}),
    Rung("cvd-transfer-features", "transfer", "feature extraction, no augmentation", 0.90,
         {"transfer_mode": "features", "image_size": LARGE}),
    Rung("cvd-transfer", "transfer", "feature extraction, with augmentation", 0.96),
    # From FINETUNE_FROM at its input size; the validation curve is flat after its tenth epoch.
    Rung("cvd-finetuned", "finetune", "fine-tuning", 0.97, {"image_size": LARGE, "epochs": 12}),
    # The seed's protocol (all 60,000 digits, the last epoch kept) with a longer cosine schedule.
    Rung("mnist", "mnist", "MNIST convnet", 0.993, {"validation_split": 0.0, "epochs": 10, "lr_schedule": "cosine"}),
)
# Fine-tuning needs a transfer model of its input size with a trained head: the feature-extraction
# rung (the book fine-tunes its augmented one, cvd-transfer here, at 224), which trains in minutes.
FINETUNE_FROM = "cvd-transfer-features"
