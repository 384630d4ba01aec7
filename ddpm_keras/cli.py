"""Command-line interfaces: `ddpm-train`, `ddpm-sample` and `ddpm-evaluate`.

`scripts/train.py`, `scripts/sample.py` and `scripts/evaluate.py` use the same
parsers. `ddpm-train` has a flag per `DiffusionConfig` field, generated from
the config. User errors (bad settings, missing data or files, a full disk,
no permission, out of memory) print one line to stderr and exit with status
2; other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import os
import sys
import types
import typing

import numpy as np

from ddpm_keras.callbacks.guards import NonFiniteLossError
from ddpm_keras.checks import Choice, Integer
from ddpm_keras.config import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_OUTPUT_DIR,
    FIELD_RULES,
    PRESETS,
    SAMPLERS,
    DiffusionConfig,
    check_field,
    field_docs,
    get_config,
)
from ddpm_keras.errors import ConfigError, DataUnavailableError
from ddpm_keras.pipeline import ReverseProcessRecorder, SamplingSettings


def _flag_type(annotation):
    """argparse keywords for a field annotation: `int`, `float | None`, `tuple[int, ...]`, ..."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # `X | None`: the flag sets an X; leaving it out keeps the preset's value.
        return _flag_type(args[0])
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is tuple:
        return {"type": args[0], "nargs": "+"}
    return {"type": annotation}


def train_parser():
    """Flags of `scripts/train.py` / `ddpm-train`: one per `DiffusionConfig` field.

    Each flag's type comes from the field's annotation, its choices from its
    rule (`config.FIELD_RULES`) and its help from the field's documentation.
    Unset flags keep the preset's value.
    """
    parser = argparse.ArgumentParser(
        description="Train a DDPM on Fashion-MNIST, another TFDS image dataset or a folder "
        "of images (--image-dir). "
        "Unset flags keep the preset's value."
    )
    docs = field_docs()
    hints = typing.get_type_hints(DiffusionConfig)
    for field in dataclasses.fields(DiffusionConfig):
        keywords = _flag_type(hints[field.name])
        rule = FIELD_RULES[field.name]
        if field.name == "preset":
            keywords["choices"] = sorted(PRESETS)
        elif isinstance(rule, Choice):
            keywords["choices"] = rule.choices
        # default=None: an unset flag leaves the preset's value.
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            default=None,
            help=docs[field.name].replace("%", "%%"),
            **keywords,
        )
    # Not a config field: an action on the output directory, not a setting.
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run in --output-dir (its model, checkpoints, backups, samples and "
        "metrics) and start anew, instead of refusing a run with other settings",
    )
    return parser


def config_from_args(args):
    """Builds the `DiffusionConfig` from parsed train flags (all but `--overwrite`)."""
    overrides = vars(args).copy()
    overrides.pop("overwrite", None)
    preset = overrides.pop("preset")
    return get_config(preset, **overrides)


def add_model_flags(parser, default_model=None):
    """`--model PATH` or `--pretrained NAME`: the model a command loads."""
    from ddpm_keras.pretrained import PRETRAINED

    group = parser.add_mutually_exclusive_group(required=default_model is None)
    group.add_argument(
        "--model",
        help="saved .keras model"
        + ("" if default_model is None else f" (default: {default_model})"),
    )
    group.add_argument(
        "--pretrained",
        metavar="NAME",
        help="a released model, shipped with the package: "
        + (", ".join(sorted(PRETRAINED)) or "none yet"),
    )
    parser.set_defaults(default_model=default_model)


def model_from_args(args):
    """Loads the model of `--model` / `--pretrained`; returns it and where it came from."""
    from ddpm_keras.model import load_diffusion_model
    from ddpm_keras.pretrained import load_pretrained

    if args.pretrained is not None:
        return load_pretrained(args.pretrained), f"pretrained:{args.pretrained}"
    return load_diffusion_model(model_file(args)), model_file(args)


def model_file(args):
    """The `.keras` file `--model` / `--pretrained` names."""
    from ddpm_keras.pretrained import pretrained_path

    if args.pretrained is not None:
        return pretrained_path(args.pretrained)
    return args.model or args.default_model


# What `ddpm-sample` draws when not told how many.
DEFAULT_NUM_IMAGES = 36
DEFAULT_PER_CLASS = 6


def sample_parser():
    """Flags of `scripts/sample.py` / `ddpm-sample`."""
    parser = argparse.ArgumentParser(
        description="Sample images from a saved DDPM or a released one (--pretrained)."
    )
    add_model_flags(parser, default_model=os.path.join(DEFAULT_OUTPUT_DIR, "model.keras"))
    parser.add_argument(
        "--num-images",
        type=int,
        help=f"images (default: {DEFAULT_NUM_IMAGES}; for a class-conditional model without "
        "--class, one row per class of NUM_IMAGES // classes, default "
        f"{DEFAULT_PER_CLASS} per class)",
    )
    parser.add_argument(
        "--steps", type=int, help="sampling steps (default: 50 for ddim, T for ddpm)"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--output", default="samples.png", help="PNG grid path (default: %(default)s)"
    )
    parser.add_argument(
        "--class",
        dest="class_label",
        help="class-conditional models: a class name (e.g. sneaker) or id for every image",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        help="class-conditional models: a grid with one row of this many images per class "
        "(what they draw by default)",
    )
    parser.add_argument(
        "--unconditional",
        action="store_true",
        help="class-conditional models: draw from the unconditional model (no label) instead",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        help="classifier-free guidance of --class / --per-class samples: 0 unconditional, "
        f"1 conditional, >1 guided (default: {DEFAULT_GUIDANCE_SCALE:g})",
    )
    parser.add_argument(
        "--gif", help="also write an animated GIF of the reverse process to this .gif path"
    )
    parser.add_argument(
        "--gif-frames",
        type=int,
        default=40,
        help="frames of the GIF, spread over the steps (default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (one compiled loop)"
    )
    return parser


# errno values of operating-system errors a user can fix (disk full, no
# permission) rather than bugs, with what to do; other OSErrors keep their
# traceback.
_USER_OS_ERRORS = {
    errno.ENOSPC: ("No space left on the device", "free some space"),
    errno.EDQUOT: ("Disk quota exceeded", "free some space"),
    errno.EACCES: ("Permission denied", "fix the permissions"),
    errno.EPERM: ("Operation not permitted", "fix the permissions"),
    errno.EROFS: ("Read-only file system", "write to another --output-dir"),
}
INTERRUPTED_MESSAGE = (
    "Interrupted. Re-run the same command to resume (ddpm-train: after the last "
    "completed epoch; ddpm-evaluate: after the last scored row)."
)


def user_error_message(error):
    """The one-line message for an error a user can fix, or `None` for a bug.

    User errors are bad settings (`ConfigError`), unavailable data
    (`DataUnavailableError`), a full disk or a permission problem, and
    running out of memory. Anything else, a `ValueError` raised in a user's
    callback included, is not one.
    """
    import tensorflow as tf

    if isinstance(error, (ConfigError, DataUnavailableError)):
        return str(error)
    if isinstance(error, OSError) and error.errno in _USER_OS_ERRORS:
        what, remedy = _USER_OS_ERRORS[error.errno]
        where = f" at {error.filename!r}" if error.filename else ""
        detail = f" ({error.strerror})" if error.strerror and error.strerror != what else ""
        return (
            f"{what}{where}{detail}. Nothing written before was lost: {remedy}, then "
            "re-run the same command to resume."
        )
    if isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError)):
        return (
            "Out of memory. Lower --batch-size, or --base-channels / --num-res-blocks "
            f"for a smaller network, then re-run. ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        )
    return None


def user_errors_exit(main):
    """Turns the failures a user can fix into one line on stderr and an exit status.

    User errors (see `user_error_message`) exit with status 2; a training
    run stopped by a non-finite loss exits with status 1, and Ctrl-C with
    130 (as a shell reports SIGINT). Anything else propagates with its
    traceback: it is a bug, here or in a user's callback.
    """

    @functools.wraps(main)
    def wrapper(argv=None, **options):
        try:
            return main(argv, **options)
        except KeyboardInterrupt:
            print(f"\n{INTERRUPTED_MESSAGE}", file=sys.stderr)
            return 130
        except NonFiniteLossError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except Exception as error:
            message = user_error_message(error)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 2

    return wrapper


@user_errors_exit
def train_main(argv=None):
    """Entry point of `ddpm-train`."""
    from ddpm_keras.training import train

    args = train_parser().parse_args(argv)
    config = config_from_args(args)
    train(config, overwrite=args.overwrite)
    print(f"Artifacts in {config.output_dir}")
    return 0


@user_errors_exit
def sample_main(argv=None):
    """Entry point of `ddpm-sample` (and `scripts/sample.py`)."""
    from ddpm_keras.files import ensure_writable_dir, save_gif, save_image_grid

    args = sample_parser().parse_args(argv)
    if not args.output.endswith(".png"):
        raise ConfigError(f"`--output` must end in '.png'. Received: output={args.output!r}")
    if args.gif is not None and not args.gif.endswith(".gif"):
        raise ConfigError(f"`--gif` must end in '.gif'. Received: gif={args.gif!r}")
    for name in ("num_images", "per_class", "batch_size", "gif_frames"):
        if getattr(args, name) is not None:
            Integer(2 if name == "gif_frames" else 1).check(name, getattr(args, name))
    chosen = [
        f"{flag}={value!r}"
        for flag, value in (
            ("class", args.class_label),
            ("per_class", args.per_class),
            ("unconditional", args.unconditional or None),
        )
        if value is not None
    ]
    if len(chosen) > 1:
        raise ConfigError(
            "Give one of `--class`, `--per-class` and `--unconditional`. "
            f"Received: {', '.join(chosen)}"
        )
    if args.unconditional and args.guidance_scale is not None:
        raise ConfigError(
            "`--guidance-scale` applies to labelled samples, not `--unconditional` ones. "
            f"Received: guidance_scale={args.guidance_scale}"
        )
    settings = SamplingSettings(
        args.sampler,
        args.steps,
        args.eta,
        DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale,
        args.seed,
    )
    for path in (args.output, args.gif):
        if path is not None:
            ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
    model, _ = model_from_args(args)
    # Checks the steps against the model's T before any work, and gives the real count.
    steps = settings.make_sampler(model.schedule, model.prediction).num_steps
    if model.num_classes is None and chosen:
        raise ConfigError(
            "`--class`, `--per-class` and `--unconditional` need a class-conditional model. "
            f"Received: {', '.join(chosen)} for an unconditional model"
        )
    if model.num_classes is None and args.guidance_scale is not None:
        raise ConfigError(
            "`--guidance-scale` needs a class-conditional model. "
            f"Received: guidance_scale={args.guidance_scale} for an unconditional model"
        )
    num_images = DEFAULT_NUM_IMAGES if args.num_images is None else args.num_images
    labels = columns = None
    if args.class_label is not None:
        label = args.class_label
        labels = model.label_ids(int(label) if label.isdigit() else label, num_images)
    elif model.num_classes is not None and not args.unconditional:
        # The default of a class-conditional model: guided samples, a row per class.
        columns = args.per_class
        if columns is None:
            columns = (
                DEFAULT_PER_CLASS
                if args.num_images is None
                else max(1, args.num_images // model.num_classes)
            )
        labels = np.repeat(np.arange(model.num_classes), columns)
        num_images = len(labels)
    recorder = ReverseProcessRecorder(
        num_images, args.batch_size, steps, args.gif_frames, columns=columns
    )
    use_callback = args.gif is not None or not args.no_progress
    progress = recorder.progress(show_bar=not args.no_progress, keep_frames=bool(args.gif))
    images = model.pipeline(
        num_images, settings, labels, args.batch_size, progress if use_callback else None
    )
    title = f"{args.sampler}, {steps} steps, seed {args.seed}"
    if labels is not None:
        title += f", guidance {settings.guidance_scale:g}"
        if args.class_label is not None:
            title = f"{model.class_names[labels[0]]}: {title}"
    row_labels = None if columns is None else model.class_names
    save_image_grid(images, args.output, title=title, columns=columns, row_labels=row_labels)
    print(f"Wrote {len(images)} samples to {args.output}")
    if args.gif:
        frames = recorder.frames()
        save_gif(frames, args.gif)
        print(f"Wrote the reverse process ({len(frames)} frames) to {args.gif}")
    return 0


DEFAULT_EVALUATION_SETTINGS = ("ddim:10", "ddim:25", "ddim:50", "ddim:100", "ddim:250", "ddpm:1000")


def evaluate_parser():
    """Flags of `scripts/evaluate.py` / `ddpm-evaluate`."""
    from ddpm_keras.features import EXTRACTORS

    parser = argparse.ArgumentParser(
        description="FID and KID of a saved DDPM for a grid of samplers and step counts."
    )
    add_model_flags(parser)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_EVALUATION_SETTINGS),
        help="SAMPLER:STEPS[:ETA] per row (default: %(default)s)",
    )
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per row")
    parser.add_argument(
        "--guidance-scales",
        type=float,
        nargs="+",
        help="class-conditional models: a row per setting and scale, from class-balanced "
        f"samples (default: {DEFAULT_GUIDANCE_SCALE:g}; 0 is the unconditional model). "
        "Fashion-MNIST models also get the committed classifier's agreement with the class "
        "asked for",
    )
    parser.add_argument(
        "--extractor",
        "--features",
        choices=EXTRACTORS,
        help="features of FID and KID (default: fmnist for Fashion-MNIST models; models of "
        "other data must name one)",
    )
    parser.add_argument(
        "--inception-weights",
        default="imagenet",
        help="InceptionV3 no-top .h5 weights file for --extractor inception "
        "(default: download the ImageNet weights)",
    )
    parser.add_argument(
        "--dataset",
        help="TFDS dataset to compare with (default: the model's training data, else "
        "fashion_mnist)",
    )
    parser.add_argument(
        "--image-dir",
        help="folder-trained models: where the folder is now (default: where it was); "
        "samples are compared with its held-out images, the floor is its training images",
    )
    parser.add_argument(
        "--reference-split", default="test", help="TFDS split samples are compared to"
    )
    parser.add_argument(
        "--floor-split",
        default="train",
        help="TFDS split of real images scored like samples, as the floor ('none': skip)",
    )
    parser.add_argument("--manual-dir", help="folder of the dataset's original files (offline)")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--max-reference-examples", type=int, help="first N of the reference split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="sample with the EMA weights (default) or the raw trained weights, "
        "to see what the EMA buys",
    )
    parser.add_argument(
        "--output-dir",
        default=os.path.join("artifacts", "evaluation"),
        help="where evaluation.json and evaluation.md go (default: %(default)s)",
    )
    return parser


# What must match for a re-run of `ddpm-evaluate` to keep the rows an earlier
# run wrote to the same evaluation.json: everything a row's numbers depend on
# besides its own sampler setting.
RESUME_FIELDS = (
    "model",
    "model_sha256",
    "extractor",
    "data",
    "reference",
    "reference_examples",
    "floor_split",
    "num_samples",
    "seed",
    "weights",
    "classifier",
)


def earlier_rows(path, header):
    """The rows of an interrupted (or shorter) run of the same evaluation at `path`.

    A report of another evaluation, or an unreadable one, is replaced, and
    the message says so.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as file:
            earlier = json.load(file)
        rows = earlier["rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"{path} is unreadable ({error}); scoring every row and replacing it")
        return []
    differing = [field for field in RESUME_FIELDS if earlier.get(field) != header[field]]
    if differing:
        print(
            f"{path} holds another evaluation (its {', '.join(differing)} differ); "
            "scoring every row and replacing it"
        )
        return []
    print(f"Resuming {path}: keeping the {len(rows)} rows it has")
    return rows


@user_errors_exit
def evaluate_main(argv=None, report_callback=None):
    """Entry point of `ddpm-evaluate` (and `scripts/evaluate.py`).

    `report_callback`, if given, is called with the report after every row.
    """
    from ddpm_keras.data import folder_evaluation_images, load_split_arrays
    from ddpm_keras.evaluation import NUM_SAMPLES, class_mix, evaluate_model, markdown_table
    from ddpm_keras.features import (
        default_extractor,
        fmnist_card,
        fmnist_classifier_for,
        get_feature_extractor,
    )
    from ddpm_keras.files import ensure_writable_dir, file_sha256, write_json, write_text

    args = evaluate_parser().parse_args(argv)
    settings = [SamplingSettings.parse(text, seed=args.seed) for text in args.settings]
    NUM_SAMPLES.check("num_samples", args.num_samples)  # before loading anything
    for scale in args.guidance_scales or ():
        check_field("guidance_scale", scale)
    ensure_writable_dir(args.output_dir)
    model, model_source = model_from_args(args)
    if args.weights == "raw":
        if model.sampling_only:
            raise ConfigError(
                "`--weights raw` needs a model saved by training; this one holds only its "
                f"EMA weights. Received: {model_source}"
            )
        # Sampling always uses ema_network; give it the raw weights.
        model.ema_network.set_weights(model.network.get_weights())
    for setting in settings:  # fail before any sampling, not after an hour of it
        setting.make_sampler(model.schedule, model.prediction)
    if model.num_classes is None and args.guidance_scales is not None:
        raise ConfigError(
            "`--guidance-scales` needs a class-conditional model. "
            f"Received: {model_source} (unconditional)"
        )
    data = model.training_data or {}
    if args.image_dir is not None and "image_dir" not in data:
        raise ConfigError(
            "`--image-dir` is for models trained on an image folder (its held-out images are "
            f"the reference); this one was trained on {data or 'unrecorded data'}. "
            f"Received: image_dir={args.image_dir!r}"
        )
    extractor_name = args.extractor or default_extractor(model.image_shape, model.training_data)
    extractor = get_feature_extractor(extractor_name, model.image_shape, args.inception_weights)
    if "image_dir" in data:
        image_dir = args.image_dir or data["image_dir"]
        num_floor = 0 if args.floor_split == "none" else args.num_samples
        reference, floor = folder_evaluation_images(
            data, model.image_shape, num_floor, args.seed, image_dir
        )
        reference = reference[: args.max_reference_examples]
        source, reference_name = image_dir, f"{image_dir} held-out"
    else:
        dataset = args.dataset or data.get("dataset") or "fashion_mnist"
        # The transforms of training apply to the data it was trained on.
        same = dataset == data.get("dataset")
        image_size = data.get("image_size") if same else None
        channels = data.get("channels") if same else None

        def split_images(split, max_examples):
            images, _, _ = load_split_arrays(
                dataset, split, args.data_dir, args.manual_dir, max_examples, image_size, channels
            )
            if images.shape[1:] != model.image_shape:
                raise ConfigError(
                    f"The model makes {model.image_shape} images but {dataset} has "
                    f"{images.shape[1:]}. Received: dataset={dataset!r}"
                )
            return (images + 1.0) / 2.0  # [-1, 1] -> [0, 1], what the extractor takes

        reference = split_images(args.reference_split, args.max_reference_examples)
        floor = None if args.floor_split == "none" else split_images(args.floor_split, None)
        source, reference_name = dataset, f"{dataset} {args.reference_split}"
    # The committed classifier labels the samples of Fashion-MNIST models:
    # a conditional model's classes, or an unconditional one's class mix.
    class_names = model.class_names
    if class_names is None and "image_dir" not in data and source == "fashion_mnist":
        class_names = fmnist_card()["label_names"]
    classifier = classifier_name = reference_mix = None
    if class_names is not None:
        classifier = fmnist_classifier_for(model.image_shape, class_names)
    if classifier is not None:
        classifier_name = "fmnist classifier"
        reference_mix = class_mix(classifier, reference, class_names)
    print(
        f"Scoring {model_source}: {args.num_samples} samples per row against "
        f"{len(reference)} {reference_name} images ({extractor_name} features)"
    )
    report_path = os.path.join(args.output_dir, "evaluation.json")
    header = {
        "model": model_source,
        "model_sha256": file_sha256(model_file(args)),
        "extractor": extractor_name,
        "data": source,
        "reference": reference_name,
        "reference_examples": len(reference),
        "floor_split": args.floor_split,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "weights": args.weights,
        "classifier": classifier_name,
        "reference_class_mix": reference_mix,
        "rows_planned": (floor is not None) + len(settings) * len(args.guidance_scales or [None]),
    }
    scored_rows = earlier_rows(report_path, header)

    def write_report(rows, complete=False):
        # Written after every row, so that a killed run keeps what it scored
        # and the same command resumes it.
        report = header | {"complete": complete, "rows": rows}
        write_json(report_path, report)
        table = markdown_table(rows, extractor_name, reference_name, classifier_name)
        write_text(os.path.join(args.output_dir, "evaluation.md"), table + "\n")
        if report_callback is not None:
            report_callback(report)
        return table

    rows = evaluate_model(
        model,
        extractor,
        reference,
        settings,
        args.num_samples,
        floor_images=floor,
        seed=args.seed,
        guidance_scales=args.guidance_scales,
        classifier=classifier,
        class_names=class_names,
        reference_class_mix=reference_mix,
        progress=True,
        scored_rows=scored_rows,
        row_callback=write_report,
    )
    table = write_report(rows, complete=True)
    print(f"\n{table}\n\nWrote {args.output_dir}/evaluation.json and evaluation.md")
    return 0
