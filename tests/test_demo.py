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


def test_the_demo_generates_its_data_again_only_when_it_generated_them_with_other_options(tmp_path):
    from training.demo_data import GENERATED_FILE, generate_demo_dataset, generated_dataset, generated_with, generation_options

    def demo_data(folder):  # as the demo (and `train --demo`) asks for its data
        return generated_dataset(folder, what="the demo dataset", keep_unrecorded=True)

    data = tmp_path / "demo"
    assert demo_data(data) is True and generated_with(data) == generation_options()
    first = (data / "train" / "circles" / "circle.0000.jpg").stat().st_mtime_ns
    assert demo_data(data) is False  # these options' images: kept
    assert (data / "train" / "circles" / "circle.0000.jpg").stat().st_mtime_ns == first

    older = generate_demo_dataset(tmp_path / "older", per_class={"train": 2}, radius=(0.2, 0.3))
    assert demo_data(older) is True  # an earlier version's: generated again, with the options of now
    assert generated_with(older) == generation_options() and len(list((older / "test" / "squares").iterdir())) == 40

    own = generate_demo_dataset(tmp_path / "own", per_class={"train": 2})
    (own / GENERATED_FILE).unlink()  # a folder the demo did not generate: used as it is
    assert demo_data(own) is False and sorted(p.name for p in own.iterdir()) == ["annotations.csv", "train"]
