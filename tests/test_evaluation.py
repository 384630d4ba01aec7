"""The quality table of a saved model: `evaluate_model` and `ddpm-evaluate`."""

import json

import keras
import numpy as np
import pytest

from ddpm_keras.cli import evaluate_main
from ddpm_keras.evaluation import (
    class_agreement,
    classify,
    evaluate_model,
    markdown_table,
)
from ddpm_keras.features import FeatureExtractor
from ddpm_keras.machine import cpu_description
from ddpm_keras.metrics import frechet_distance
from ddpm_keras.pipeline import SamplingSettings

from .conftest import (
    CLASS_NAMES,
    build_tiny_conditional_model,
    build_tiny_network,
    randomize_weights,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ddim:50", SamplingSettings("ddim", 50, 0.0)),
        ("ddim:20:0.5", SamplingSettings("ddim", 20, 0.5)),
        ("ddpm:1000", SamplingSettings("ddpm", 1000, 0.0)),
    ],
)
def test_sampler_settings_parse(text, expected):
    assert SamplingSettings.parse(text) == expected


@pytest.mark.parametrize("text", ["ddim", "ddim:x", "euler:10", "ddim:10:0.1:3"])
def test_bad_sampler_settings_say_the_format(text):
    with pytest.raises(ValueError, match=rf"SAMPLER:STEPS\[:ETA\].*Received: '{text}'"):
        SamplingSettings.parse(text)


def toy_extractor():
    """Features of 8x8 images: a fixed random projection."""
    keras.utils.set_random_seed(1)
    projection = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(5, activation="tanh")]
    )
    return FeatureExtractor(projection, "toy")


def test_evaluate_model_scores_each_setting_and_the_real_floor(tiny_model):
    extractor = toy_extractor()
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, (50, 8, 8, 1)).astype(np.float32)
    floor = rng.uniform(0, 1, (30, 8, 8, 1)).astype(np.float32)
    lines = []
    settings = [SamplingSettings("ddim", 3), SamplingSettings("ddim", 3, 1.0)]
    rows = evaluate_model(
        tiny_model,
        extractor,
        reference,
        settings,
        10,
        floor,
        seed=2,
        kid_subsets=2,
        log=lines.append,
    )
    assert [r["source"] for r in rows] == ["real", "model", "model"]
    assert [r["eta"] for r in rows[1:]] == [0.0, 1.0]
    assert all(r["num_samples"] == 10 and r["seconds"] > 0 for r in rows)
    # Each row names the machine its seconds were measured on.
    assert {r["cpu"] for r in rows} == {cpu_description()}
    samples = tiny_model.generate(10, steps=3, seed=2)
    assert rows[1]["fid"] == pytest.approx(
        frechet_distance(extractor(samples), extractor(reference))
    )
    # Uniform noise as "real" images is far closer to uniform noise than the
    # untrained model's samples are.
    assert rows[0]["fid"] < rows[1]["fid"]
    assert len(lines) == 3 and "real images (floor): FID" in lines[0]
    table = markdown_table(rows, "toy", "noise test")
    assert "| ddim 3, eta 1 |" in table and "Against the noise test split" in table
    with pytest.raises(ValueError, match="needs 40 real images"):
        evaluate_model(tiny_model, extractor, reference, settings, 40, floor)


def test_evaluate_model_keeps_the_rows_an_interrupted_run_scored(tiny_model, monkeypatch):
    extractor = toy_extractor()
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, (50, 8, 8, 1)).astype(np.float32)
    floor = rng.uniform(0, 1, (30, 8, 8, 1)).astype(np.float32)
    settings = [SamplingSettings("ddim", 3), SamplingSettings("ddim", 2)]
    arguments = (tiny_model, extractor, reference, settings, 10, floor)
    options = dict(seed=2, kid_subsets=2, log=lambda line: None)
    written = []
    full = evaluate_model(*arguments, **options, row_callback=written.append)
    assert [len(rows) for rows in written] == [1, 2, 3]
    assert written[-1] == full
    # A run killed after the floor and ddim 3: its rows, marked so that a
    # re-scored row would show, and a row of a setting no longer asked for.
    earlier = [dict(row, fid=-1.0) for row in full[:2]]
    earlier.append(dict(full[2], steps=7, fid=-2.0))
    sampled = []
    pipeline_class = type(tiny_model.pipeline)
    call = pipeline_class.__call__

    def counting_call(pipeline, num_samples, settings, *args, **kwargs):
        sampled.append(settings.steps)
        return call(pipeline, num_samples, settings, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", counting_call)
    resumed = evaluate_model(*arguments, **options, scored_rows=earlier)
    assert sampled == [2]  # only the missing row was sampled
    assert [row["fid"] for row in resumed[:2]] == [-1.0, -1.0]
    assert [row["steps"] for row in resumed] == [None, 3, 2]
    # Each row's samples come from the seed alone: the resumed row is the
    # uninterrupted run's (same computation on the same machine).
    assert resumed[2]["fid"] == full[2]["fid"]
    assert resumed[2]["kid"] == full[2]["kid"]


def constant_classifier(class_id, num_classes=3):
    """A classifier of 8x8 images that always answers `class_id`."""
    logits = np.eye(num_classes, dtype=np.float32)[class_id] * 10.0
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(
                num_classes,
                kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(logits),
            ),
        ]
    )


def test_evaluate_model_scores_each_guidance_scale_of_a_conditional_model():
    model = build_tiny_conditional_model()
    randomize_weights(model.ema_network)
    reference = np.random.default_rng(0).uniform(0, 1, (50, 8, 8, 1)).astype(np.float32)
    settings = [SamplingSettings("ddim", 3)]
    extractor = toy_extractor()
    rows = evaluate_model(
        model,
        extractor,
        reference,
        settings,
        10,
        seed=2,
        kid_subsets=2,
        log=lambda line: None,
        guidance_scales=(0.0, 2.0),
        classifier=constant_classifier(1),
    )
    assert [r["guidance_scale"] for r in rows] == [0.0, 2.0]
    # Image i asks for class i mod 3: 0,1,2,0,1,2,0,1,2,0; three ask for class 1.
    assert [r["agreement"] for r in rows] == [pytest.approx(0.3)] * 2
    assert rows[0]["agreement_per_class"] == {"T-shirt/top": 0.0, "Trouser": 1.0, "Ankle boot": 0.0}
    labels = np.arange(10) % 3
    guided = model.generate(10, steps=3, seed=2, labels=labels, guidance_scale=2.0)
    assert rows[1]["fid"] == pytest.approx(
        frechet_distance(extractor(guided), extractor(reference)), rel=1e-4
    )
    assert rows[0]["fid"] != pytest.approx(rows[1]["fid"])
    table = markdown_table(rows, "toy", "noise test", "constant classifier")
    assert "| ddim 3, guidance 2 |" in table and "agreement (constant classifier)" in table
    assert "| 0.300 |" in table and "guidance 0 is the unconditional model" in table


def brightness_classifier(threshold):
    """A classifier of 8x8 images: class 1 if the mean pixel (in [-1, 1]) exceeds `threshold`."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(
                2,
                kernel_initializer=keras.initializers.Constant([[0.0, 1.0]] * 64),
                bias_initializer=keras.initializers.Constant([0.0, -64.0 * threshold]),
            ),
        ]
    )


def test_evaluate_model_gives_an_unconditional_models_class_mix(tiny_model):
    randomize_weights(tiny_model.ema_network)
    # 30 dark and 10 bright reference images: a mix of 75% and 25%.
    reference = np.concatenate([np.full((30, 8, 8, 1), 0.1), np.full((10, 8, 8, 1), 0.9)])
    floor = np.concatenate([np.full((20, 8, 8, 1), 0.1), np.full((20, 8, 8, 1), 0.9)])
    samples = tiny_model.generate(12, steps=3, seed=2)
    # The threshold splits the samples unevenly (the test would not be one if all fell on
    # one side); the expected mix is counted here without the classifier.
    threshold = float(np.median(samples.mean(axis=(1, 2, 3)) * 2.0 - 1.0)) + 1e-3
    bright = float(np.mean(samples.mean(axis=(1, 2, 3)) * 2.0 - 1.0 > threshold))
    assert 0 < bright < 1
    rows = evaluate_model(
        tiny_model,
        toy_extractor(),
        reference.astype(np.float32),
        [SamplingSettings("ddim", 3)],
        12,
        floor.astype(np.float32),
        seed=2,
        kid_subsets=2,
        log=lambda line: None,
        classifier=brightness_classifier(threshold),
        class_names=["dark", "bright"],
    )
    floor_row, model_row = rows
    assert model_row["class_mix"] == {"dark": pytest.approx(1 - bright), "bright": bright}
    assert model_row["class_mix_deviation"] == pytest.approx(abs(bright - 0.25))
    assert model_row["agreement"] is None
    # 12 of the 40 floor images, drawn at random: their mix against the reference's.
    floor_bright = floor_row["class_mix"]["bright"]
    assert floor_row["class_mix_deviation"] == pytest.approx(abs(floor_bright - 0.25))
    table = markdown_table(rows, "toy", "noise test", "brightness")
    assert "class mix: largest deviation" in table and "agreement (" not in table
    assert f"| {100 * abs(bright - 0.25):.1f} pp |" in table
    with pytest.raises(ValueError, match="needs the classifier's `class_names`"):
        evaluate_model(
            tiny_model, toy_extractor(), reference, [], 4, classifier=brightness_classifier(0)
        )


def test_evaluate_model_rejects_guidance_for_an_unconditional_model(tiny_model):
    with pytest.raises(ValueError, match="need a class-conditional model"):
        evaluate_model(tiny_model, None, np.zeros((4, 8, 8, 1)), [], 4, guidance_scales=(1.0,))


def test_class_agreement_counts_the_classifiers_answers_per_class():
    model = build_tiny_conditional_model()
    result = class_agreement(model, constant_classifier(2), per_class=4, steps=2)
    assert result["agreement"] == pytest.approx(1 / 3)
    assert result["per_class"] == {CLASS_NAMES[0]: 0.0, CLASS_NAMES[1]: 0.0, CLASS_NAMES[2]: 1.0}
    with pytest.raises(ValueError, match="The classifier has 5 classes, the model 3"):
        classify(constant_classifier(0, num_classes=5), np.zeros((2, 8, 8, 1)), 3)


@pytest.fixture(scope="module")
def smoke_model_path(tmp_path_factory):
    """An untrained 28x28 model of the smoke preset: enough for the command's plumbing."""
    from ddpm_keras.config import get_config
    from ddpm_keras.files import save_model
    from ddpm_keras.model import build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("evaluate") / "model.keras"
    save_model(build_model(get_config("smoke"), (28, 28, 1)), path)
    return str(path)


@pytest.mark.slow
def test_ddpm_evaluate_writes_json_and_table(smoke_model_path, manual_dir, tfds_data_dir, tmp_path):
    output_dir = tmp_path / "evaluation"
    code = evaluate_main(
        [
            "--model", smoke_model_path, "--settings", "ddim:2", "ddim:4",
            "--num-samples", "24", "--max-reference-examples", "300",
            "--manual-dir", manual_dir, "--data-dir", tfds_data_dir,
            "--output-dir", str(output_dir),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((output_dir / "evaluation.json").read_text())
    assert report["reference_examples"] == 300 and report["num_samples"] == 24
    rows = report["rows"]
    assert [(r["source"], r["steps"]) for r in rows] == [("real", None), ("model", 2), ("model", 4)]
    # Real train images against real test images beat an untrained model's
    # noise. KID is unbiased; FID with 24 samples of 128-d features is far
    # above 0 even for real images (here about 18 against about 80).
    assert rows[0]["kid"] < 0.2 * min(r["kid"] for r in rows[1:])
    assert rows[0]["fid"] < 0.5 * min(r["fid"] for r in rows[1:])
    table = (output_dir / "evaluation.md").read_text()
    assert "| ddim 2 |" in table and "| real images (floor) |" in table
    assert "fashion_mnist test split" in table


def test_ddpm_evaluate_resumes_an_interrupted_run(smoke_model_path, tmp_path, monkeypatch, capsys):
    from ddpm_keras import data
    from ddpm_keras.pipeline import SamplingPipeline

    reference = np.random.default_rng(0).uniform(-1, 1, (30, 28, 28, 1)).astype(np.float32)
    monkeypatch.setattr(data, "load_split_arrays", lambda *args, **kwargs: (reference, None, None))
    output_dir = tmp_path / "evaluation"
    argv = ["--model", smoke_model_path, "--settings", "ddim:2", "ddim:3", "--num-samples", "20"]
    argv += ["--floor-split", "none", "--output-dir", str(output_dir)]
    call = SamplingPipeline.__call__
    sampled = []

    def killed_at_ddim_3(pipeline, num_images, settings, *args, **kwargs):
        sampled.append(settings.steps)
        if settings.steps == 3:
            raise KeyboardInterrupt
        return call(pipeline, num_images, settings, *args, **kwargs)

    monkeypatch.setattr(SamplingPipeline, "__call__", killed_at_ddim_3)
    assert evaluate_main(argv) == 130  # Ctrl-C's exit status
    partial = json.loads((output_dir / "evaluation.json").read_text())
    assert partial["complete"] is False and partial["rows_planned"] == 2
    assert [row["steps"] for row in partial["rows"]] == [2]
    assert "| ddim 2 |" in (output_dir / "evaluation.md").read_text()

    monkeypatch.setattr(
        SamplingPipeline, "__call__", lambda *a, **k: sampled.append(a[2].steps) or call(*a, **k)
    )
    sampled.clear()
    capsys.readouterr()
    assert evaluate_main(argv) == 0
    assert sampled == [3]
    assert "keeping the 1 rows it has" in capsys.readouterr().out
    report = json.loads((output_dir / "evaluation.json").read_text())
    assert report["complete"] is True
    assert report["rows"][0] == partial["rows"][0]
    assert [row["steps"] for row in report["rows"]] == [2, 3]

    # Another seed is another evaluation: every row is sampled again.
    sampled.clear()
    assert evaluate_main([*argv, "--seed", "1"]) == 0
    assert sampled == [2, 3]
    assert "its seed differ" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--settings", "ddim:0"], "steps"),
        (["--settings", "fast:10"], "SAMPLER:STEPS"),
        (["--num-samples", "1"], "num_samples=1"),
        (["--guidance-scales", "-1"], "guidance_scale=-1.0"),
        (["--guidance-scales", "2"], "needs a class-conditional model"),
    ],
)
def test_ddpm_evaluate_rejects_bad_values_before_sampling(smoke_model_path, extra, message, capsys):
    assert evaluate_main(["--model", smoke_model_path, *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and message in error


def test_ddpm_evaluate_missing_model(tmp_path, capsys):
    assert evaluate_main(["--model", str(tmp_path / "none.keras")]) == 2
    assert "none.keras" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_ddpm_evaluate_samples_with_the_chosen_weights(tiny_model, weights, tmp_path, monkeypatch):
    from ddpm_keras import data, evaluation
    from ddpm_keras.files import save_model

    for weight in tiny_model.network.weights:  # raw weights unlike the EMA copy
        weight.assign(weight + 0.5)
    path = tmp_path / "m.keras"
    save_model(tiny_model, path)
    used = {}

    def fake_evaluate_model(model, *args, **kwargs):
        used["ema"] = model.ema_network.get_weights()
        return [{"source": "model", "sampler": "ddim", "steps": 2, "eta": 0.0, "fid": 1.0,
                 "kid": 0.0, "kid_std": 0.0, "num_samples": 2, "seconds": 0.0}]  # fmt: skip

    fake_images = (np.zeros((4, 8, 8, 1), np.float32), None, None)
    monkeypatch.setattr(data, "load_split_arrays", lambda *args, **kwargs: fake_images)
    monkeypatch.setattr(evaluation, "evaluate_model", fake_evaluate_model)
    monkeypatch.setattr("ddpm_keras.features.get_feature_extractor", lambda *args, **kwargs: None)
    argv = ["--model", str(path), "--settings", "ddim:2", "--weights", weights]
    argv += ["--extractor", "fmnist"]  # an 8x8 model of unrecorded data must name one
    assert evaluate_main([*argv, "--floor-split", "none", "--output-dir", str(tmp_path)]) == 0
    expected = tiny_model.network if weights == "raw" else tiny_model.ema_network
    for actual, wanted in zip(used["ema"], expected.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, wanted)
    assert json.loads((tmp_path / "evaluation.json").read_text())["weights"] == weights


def test_ddpm_evaluate_scores_guidance_scales_with_the_committed_classifier(tmp_path, monkeypatch):
    from ddpm_keras import data
    from ddpm_keras.config import get_config
    from ddpm_keras.features import fmnist_card, fmnist_classifier
    from ddpm_keras.files import save_model
    from ddpm_keras.model import build_model

    keras.utils.set_random_seed(0)
    config = get_config("smoke", class_conditional=True)
    model = build_model(config, (28, 28, 1), fmnist_card()["label_names"])
    # Random weights (a new network's output layer is zero): the samples then
    # depend on the label and the guidance scale.
    randomize_weights(model.ema_network, seed=3)
    path = tmp_path / "conditional.keras"
    save_model(model, path)
    reference = np.random.default_rng(0).uniform(-1, 1, (30, 28, 28, 1)).astype(np.float32)
    monkeypatch.setattr(data, "load_split_arrays", lambda *args, **kwargs: (reference, None, None))
    output_dir = tmp_path / "evaluation"
    argv = ["--model", str(path), "--settings", "ddim:2", "--guidance-scales", "0", "1.5"]
    argv += ["--num-samples", "20", "--floor-split", "none", "--output-dir", str(output_dir)]
    assert evaluate_main(argv) == 0
    report = json.loads((output_dir / "evaluation.json").read_text())
    assert report["classifier"] == "fmnist classifier"
    assert [row["guidance_scale"] for row in report["rows"]] == [0.0, 1.5]
    # Each row's agreement is what the committed classifier says of the same
    # samples (image i asks for class i mod 10, seed as reported), computed
    # here without evaluation.classify.
    labels = np.arange(20) % 10
    classifier = fmnist_classifier()
    for row in report["rows"]:
        images = model.generate(
            20, steps=2, sampler="ddim", seed=report["seed"], labels=labels,
            guidance_scale=row["guidance_scale"],
        )  # fmt: skip
        answers = np.argmax(classifier(images * 2.0 - 1.0).numpy(), axis=-1)
        correct = answers == labels
        assert row["agreement"] == pytest.approx(correct.mean())
        assert row["agreement_per_class"] == {
            name: pytest.approx(correct[labels == i].mean())
            for i, name in enumerate(model.class_names)
        }
    table = (output_dir / "evaluation.md").read_text()
    assert "| ddim 2, guidance 1.5 |" in table and "agreement (fmnist classifier)" in table


def test_ddpm_evaluate_gives_the_class_mix_of_an_unconditional_fashion_mnist_model(
    tmp_path, monkeypatch
):
    from ddpm_keras import data
    from ddpm_keras.config import get_config
    from ddpm_keras.features import fmnist_card, fmnist_classifier
    from ddpm_keras.files import save_model
    from ddpm_keras.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(get_config("smoke"), (28, 28, 1))
    randomize_weights(model.ema_network, seed=3)
    path = tmp_path / "unconditional.keras"
    save_model(model.sampling_copy(), path)
    reference = np.random.default_rng(0).uniform(-1, 1, (30, 28, 28, 1)).astype(np.float32)
    monkeypatch.setattr(data, "load_split_arrays", lambda *args, **kwargs: (reference, None, None))
    output_dir = tmp_path / "evaluation"
    argv = ["--model", str(path), "--settings", "ddim:2", "--num-samples", "20"]
    argv += ["--floor-split", "none", "--output-dir", str(output_dir)]
    assert evaluate_main(argv) == 0
    report = json.loads((output_dir / "evaluation.json").read_text())
    names = fmnist_card()["label_names"]
    classifier = fmnist_classifier()

    def mix(images):  # images in [0, 1]; counted here without evaluation.classify
        answers = np.argmax(classifier(images * 2.0 - 1.0).numpy(), axis=-1)
        return {name: np.mean(answers == i) for i, name in enumerate(names)}

    assert report["reference_class_mix"] == pytest.approx(mix((reference + 1) / 2))
    (row,) = report["rows"]
    samples = model.generate(20, steps=2, sampler="ddim", seed=report["seed"])
    assert row["class_mix"] == pytest.approx(mix(samples))
    deviation = max(abs(row["class_mix"][n] - report["reference_class_mix"][n]) for n in names)
    assert row["class_mix_deviation"] == pytest.approx(deviation)
    assert "class mix: largest deviation" in (output_dir / "evaluation.md").read_text()


@pytest.mark.slow
def test_short_conditional_training_on_fashion_mnist_draws_the_requested_classes(
    manual_dir, tfds_data_dir
):
    from ddpm_keras.data import load_split_arrays
    from ddpm_keras.features import fmnist_classifier
    from ddpm_keras.model import DiffusionModel
    from ddpm_keras.schedule import NoiseSchedule

    images, labels, names = load_split_arrays(
        "fashion_mnist", "train", tfds_data_dir, manual_dir, max_examples=4096
    )
    keras.utils.set_random_seed(0)
    network = build_tiny_network(num_classes=len(names), attention=False, image_shape=(28, 28, 1))
    # x0-prediction: early in training the network already predicts each
    # class's typical garment, which is what a short run can learn.
    model = DiffusionModel(
        network,
        NoiseSchedule("cosine", timesteps=200),
        ema_decay=0.9,
        prediction="x0",
        class_names=names,
        label_dropout=0.2,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(images, labels, batch_size=32, epochs=6, verbose=0)  # 768 steps
    result = class_agreement(
        model, fmnist_classifier(), per_class=10, steps=20, guidance_scale=3.0, seed=1
    )
    # Chance is 0.1. The unconditional half of the same model stays near it.
    assert result["agreement"] >= 0.3, result
    unconditional = class_agreement(
        model, fmnist_classifier(), per_class=10, steps=20, guidance_scale=0.0, seed=1
    )
    assert unconditional["agreement"] < 0.25, unconditional
