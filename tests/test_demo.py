"""What the demo asks of each rung, on ImageNet's base and on its own."""

from training.demo import EPOCHS, PRETRAINING, rung_options


def test_on_imagenet_weights_each_rung_gets_only_its_epochs():
    assert rung_options(own_base=False) == {recipe: {"epochs": n} for recipe, n in EPOCHS.items()}


def test_on_its_own_base_the_transfer_rungs_run_at_the_pretraining_size_on_extracted_features():
    options = rung_options(own_base=True)
    assert options["scratch"] == {"epochs": EPOCHS["scratch"]} and options["augmented"] == {"epochs": EPOCHS["augmented"]}
    assert options["transfer"]["image_size"] == options["finetune"]["image_size"] == PRETRAINING["image_size"]
    assert options["transfer"]["transfer_mode"] == "features"


def test_epochs_given_apply_to_every_rung():
    for own_base in (False, True):
        assert {o["epochs"] for o in rung_options(own_base=own_base, epochs=2).values()} == {2}
