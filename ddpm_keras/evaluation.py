"""Sample quality of a saved model over a grid of samplers and step counts (`ddpm-evaluate`)."""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np

from ddpm_keras.checks import Integer
from ddpm_keras.config import DEFAULT_GUIDANCE_SCALE
from ddpm_keras.errors import ConfigError
from ddpm_keras.machine import cpu_description
from ddpm_keras.metrics import (
    FeatureStatistics,
    frechet_distance_from_statistics,
    kernel_inception_distance,
)
from ddpm_keras.pipeline import SamplingSettings

# FID needs a covariance of the samples' features: at least two samples.
NUM_SAMPLES = Integer(2)


def score_features(features, reference_features, reference_statistics, kid_subsets, seed):
    """FID against the reference statistics and, given reference features, KID.

    Returns:
        `{"fid": ...}`, plus `"kid"` and `"kid_std"` unless
        `reference_features` is `None`.
    """
    scores = {
        "fid": frechet_distance_from_statistics(
            FeatureStatistics.from_features(features), reference_statistics
        )
    }
    if reference_features is not None:
        scores["kid"], scores["kid_std"] = kernel_inception_distance(
            features,
            reference_features,
            num_subsets=kid_subsets,
            subset_size=min(1000, len(features)),
            seed=seed,
        )
    return scores


def evaluate_model(
    model,
    extractor,
    reference_images,
    settings,
    num_samples=1000,
    floor_images=None,
    seed=0,
    kid_subsets=10,
    log=print,
    guidance_scales=None,
    classifier=None,
    class_names=None,
    reference_class_mix=None,
    progress=False,
    scored_rows=(),
    row_callback=None,
):
    """FID and KID of `num_samples` samples per sampler setting.

    Args:
        model: A `DiffusionModel`.
        extractor: A `FeatureExtractor`.
        reference_images: `[N, H, W, C]` in [0, 1]: the reference split.
        settings: `SamplingSettings` to score (their seed and guidance
            scale are replaced by `seed` and `guidance_scales`).
        num_samples: Samples per setting (FID depends on it; say it).
        floor_images: Real images in [0, 1] other than the reference ones
            (e.g. the train split); `num_samples` of them are scored the same
            way, as the floor a perfect model would reach (real vs real).
        seed: Sampling seed, the same for every setting.
        kid_subsets: KID subsets.
        log: Called with one line per finished setting.
        guidance_scales: Class-conditional models only: one row per setting
            and scale, each from class-balanced samples (image i asks for
            class i mod num_classes). `None`: `(DEFAULT_GUIDANCE_SCALE,)`
            for a conditional model.
        classifier: Optional: a Keras model mapping images in [-1, 1] to
            logits over `class_names` (e.g. `features.fmnist_classifier_for`).
            Every row then gets its class mix (see `class_mix`) and the
            mix's largest deviation from the reference images' mix under the
            same classifier; rows of a conditional model also get the share
            of samples it labels as the class asked for.
        class_names: The classifier's classes, in its order: the model's
            own for a conditional model (`None` takes them), the data's for
            an unconditional one.
        reference_class_mix: The reference images' class mix under
            `classifier`, if already known (`None`: measured here).
        progress: Show a progress bar over each row's samples.
        scored_rows: Rows an interrupted run of this same evaluation already
            scored (same model, reference, seed and extractor: the caller
            checks). A planned row with the same `row_key` is taken from them
            instead of being sampled again; every row draws its samples from
            `seed` alone, so the result is the uninterrupted run's.
        row_callback: Called with the rows so far after each row, e.g. to
            write them to disk.

    Returns:
        One dict per row: `source`, `sampler`, `steps`, `eta`,
        `guidance_scale` (`None` if unconditional), `num_samples`, `fid`,
        `kid`, `kid_std`, `agreement` (`None` unless measured),
        `class_mix` and `class_mix_deviation` (`None` without a
        classifier), `seconds` and the `cpu` they were measured on (rows
        of a resumed evaluation may come from another machine); conditional
        rows with a classifier also have `agreement_per_class` (class name
        -> share).
    """
    NUM_SAMPLES.check("num_samples", num_samples)
    if model.num_classes is None:
        if guidance_scales is not None:
            raise ConfigError(
                "Guidance scales need a class-conditional model. "
                f"Received: guidance_scales={guidance_scales!r} for an unconditional model"
            )
        if classifier is not None and class_names is None:
            raise ConfigError(
                "The class mix of an unconditional model needs the classifier's "
                "`class_names`. Received: class_names=None"
            )
        guidance_scales = (None,)
    else:
        class_names = model.class_names if class_names is None else list(class_names)
        if class_names != model.class_names:
            raise ConfigError(
                "`class_names` must be the model's classes, in its order. "
                f"Received: class_names={class_names!r}, the model's: {model.class_names!r}"
            )
        if guidance_scales is None:
            guidance_scales = (DEFAULT_GUIDANCE_SCALE,)
    labels = None if model.num_classes is None else np.arange(num_samples) % model.num_classes
    if classifier is not None and reference_class_mix is None:
        reference_class_mix = class_mix(classifier, reference_images, class_names)

    def mix_of(images):
        if classifier is None:
            return {"class_mix": None, "class_mix_deviation": None}, None
        predicted = classify(classifier, images, len(class_names))
        mix = _class_shares(predicted, class_names)
        deviation = max(abs(mix[name] - reference_class_mix[name]) for name in class_names)
        return {"class_mix": mix, "class_mix_deviation": deviation}, predicted

    reference_features = extractor(reference_images)
    reference_statistics = FeatureStatistics.from_features(reference_features)
    kept = {row_key(row): row for row in scored_rows}
    rows = []

    def add(row, reused=False):
        rows.append(row)
        log(_row_line(row) + ("  (scored before)" if reused else ""))
        if row_callback is not None:
            row_callback(list(rows))

    floor_key = row_key({"source": "real", "num_samples": num_samples})
    if floor_images is not None and floor_key in kept:
        add(kept[floor_key], reused=True)
    elif floor_images is not None:
        if len(floor_images) < num_samples:
            raise ConfigError(
                f"The floor needs {num_samples} real images. Received: {len(floor_images)}"
            )
        start = time.perf_counter()
        chosen = np.random.default_rng(seed).choice(len(floor_images), num_samples, replace=False)
        floor_sample = floor_images[np.sort(chosen)]
        scores = score_features(
            extractor(floor_sample), reference_features, reference_statistics, kid_subsets, seed
        )
        add(
            {"source": "real", "sampler": None, "steps": None, "eta": None, "guidance_scale": None}
            | {"num_samples": num_samples, **scores, "agreement": None}
            | mix_of(floor_sample)[0]
            | {"seconds": time.perf_counter() - start, "cpu": cpu_description()}
        )
    for setting in settings:
        for guidance_scale in guidance_scales:
            key = row_key(
                {"source": "model", "sampler": setting.sampler, "steps": setting.steps}
                | {"eta": setting.eta, "guidance_scale": guidance_scale}
                | {"num_samples": num_samples}
            )
            if key in kept:
                add(kept[key], reused=True)
                continue
            start = time.perf_counter()
            row_settings = dataclasses.replace(
                setting, seed=seed, guidance_scale=1.0 if guidance_scale is None else guidance_scale
            )
            batch_callback = None
            if progress:
                bar = keras.utils.Progbar(num_samples, unit_name="image")
                batch_callback = bar.update
            images = model.pipeline(
                num_samples, row_settings, labels, batch_callback=batch_callback
            )
            scores = score_features(
                extractor(images), reference_features, reference_statistics, kid_subsets, seed
            )
            mix, predicted = mix_of(images)
            agreement = {"agreement": None}
            if predicted is not None and labels is not None:
                correct = predicted == labels
                agreement = {
                    "agreement": float(np.mean(correct)),
                    "agreement_per_class": _per_class_shares(correct, labels, model.class_names),
                }
            add(
                {"source": "model", "sampler": setting.sampler, "steps": setting.steps}
                | {"eta": setting.eta, "guidance_scale": guidance_scale}
                | {"num_samples": num_samples, **scores, **agreement, **mix}
                | {"seconds": time.perf_counter() - start, "cpu": cpu_description()}
            )
    return rows


def row_key(row):
    """What identifies a row of `evaluate_model`: its source, sampler setting and N."""
    fields = ("source", "sampler", "steps", "eta", "guidance_scale", "num_samples")
    return tuple(row.get(field) for field in fields)


def _per_class_shares(correct, labels, class_names):
    """Class name -> the share of its samples labelled correctly (`None`: no samples)."""
    return {
        name: float(np.mean(correct[labels == index])) if np.any(labels == index) else None
        for index, name in enumerate(class_names)
    }


def _class_shares(class_ids, class_names):
    """Class name -> the share of `class_ids` that are its id."""
    counts = np.bincount(class_ids, minlength=len(class_names))
    return {
        name: float(count / len(class_ids)) for name, count in zip(class_names, counts, strict=True)
    }


def class_mix(classifier, images, class_names):
    """The share of images in [0, 1] a classifier labels as each class.

    A model can score a fair FID and still draw some classes rarely; its
    samples' mix, beside the real images' mix under the same classifier,
    shows it.

    Returns:
        Class name -> share (the shares sum to 1).
    """
    return _class_shares(classify(classifier, images, len(class_names)), class_names)


def classify(classifier, images, num_classes):
    """The class ids a classifier gives images in [0, 1] (it takes [-1, 1])."""
    logits = classifier.predict(images * 2.0 - 1.0, batch_size=256, verbose=0)
    if logits.shape[-1] != num_classes:
        raise ConfigError(
            f"The classifier has {logits.shape[-1]} classes, the model {num_classes}. "
            f"Received: classifier={getattr(classifier, 'name', classifier)!r}"
        )
    return np.argmax(logits, axis=-1)


def row_label(row):
    """What a row of `evaluate_model` scored: e.g. "ddim 50, guidance 3" or the floor."""
    if row["source"] == "real":
        return "real images (floor)"
    label = SamplingSettings(row["sampler"], row["steps"], row["eta"]).label
    if row.get("guidance_scale") is not None:
        label += f", guidance {row['guidance_scale']:g}"
    return label


def _row_line(row):
    agreement = "" if row.get("agreement") is None else f", agreement {row['agreement']:.3f}"
    if row.get("class_mix_deviation") is not None:
        agreement += f", class mix off by at most {100 * row['class_mix_deviation']:.1f} pp"
    return (
        f"{row_label(row)}: FID {row['fid']:.2f}, KID {row['kid']:.4f} "
        f"± {row['kid_std']:.4f}{agreement} ({row['num_samples']} samples, {row['seconds']:.1f} s)"
    )


def markdown_table(rows, extractor_name, reference_split, classifier_name=None):
    """The rows as a Markdown table, with what every number was measured on.

    With `classifier_name`, columns give each row's class agreement
    (conditional models) and its class mix's largest deviation.
    """
    conditional = any(row.get("guidance_scale") is not None for row in rows)
    extra_headers = []
    if classifier_name is not None:
        if conditional:
            extra_headers.append(f"agreement ({classifier_name})")
        extra_headers.append("class mix: largest deviation")
    lines = [
        f"| samples | FID ({extractor_name}) | KID ({extractor_name}) |"
        + "".join(f" {header} |" for header in extra_headers)
        + " seconds | N |",
        "|---|---|---|---|---|" + "---|" * len(extra_headers),
    ]
    for row in rows:
        agreement = ""
        if classifier_name is not None:
            if conditional:
                agreement += (
                    " - |" if row.get("agreement") is None else f" {row['agreement']:.3f} |"
                )
            deviation = row.get("class_mix_deviation")
            agreement += " - |" if deviation is None else f" {100 * deviation:.1f} pp |"
        lines.append(
            f"| {row_label(row)} | {row['fid']:.2f} | {row['kid']:.4f} ± {row['kid_std']:.4f} "
            f"|{agreement} {row['seconds']:.1f} | {row['num_samples']} |"
        )
    lines.append("")
    notes = (
        f"Against the {reference_split} split; N samples per row, the same seed for each; "
        "seconds include sampling and feature extraction."
    )
    if conditional:
        notes += " Guided rows ask for every class in turn; guidance 0 is the unconditional model."
    if classifier_name is not None:
        if conditional:
            notes += (
                " Agreement: the share of samples the classifier labels as the class asked for."
            )
        notes += (
            " Class mix: the share of samples the classifier labels as each class; its largest "
            "deviation (percentage points) from the reference images' mix under the same "
            "classifier."
        )
    lines.append(notes)
    return "\n".join(lines)


def class_agreement(
    model,
    classifier,
    per_class,
    sampler="ddim",
    steps=None,
    guidance_scale=DEFAULT_GUIDANCE_SCALE,
    seed=0,
):
    """How often a classifier labels class-conditional samples as the class asked for.

    Args:
        model: A class-conditional `DiffusionModel`.
        classifier: A Keras model mapping images in [-1, 1] to logits over
            the same classes, in the same order (e.g.
            `features.fmnist_classifier()` for Fashion-MNIST).
        per_class: Samples per class.
        sampler, steps: The sampler and its steps.
        guidance_scale: Classifier-free guidance scale.
        seed: Sampling seed.

    Returns:
        A dict: `agreement` (the share of all samples), `per_class` (name ->
        share), `per_class_samples` and the sampling settings.
    """
    if model.num_classes is None:
        raise ConfigError("`model` must be class-conditional. Received: an unconditional model")
    labels = np.repeat(np.arange(model.num_classes), per_class)
    settings = SamplingSettings(sampler, steps, guidance_scale=guidance_scale, seed=seed)
    images = model.pipeline(len(labels), settings, labels)
    correct = classify(classifier, images, model.num_classes) == labels
    return {
        "agreement": float(np.mean(correct)),
        "per_class": _per_class_shares(correct, labels, model.class_names),
        "per_class_samples": per_class,
        "sampler": sampler,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "seed": seed,
    }
