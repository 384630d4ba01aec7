"""Command-line interfaces: `ddpm-train`, `ddpm-sample` and `ddpm-evaluate`.

`scripts/train.py`, `scripts/sample.py` and `scripts/evaluate.py` use the same parsers. User errors
(bad values, missing data or files) print one line to stderr and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys

import numpy as np

from ddpm_keras.callbacks.guards import NonFiniteLossError
from ddpm_keras.config import (
    DEFAULT_GUIDANCE_SCALE,
    LEARNING_RATE_SCHEDULES,
    PRECISIONS,
    PREDICTIONS,
    PRESETS,
    STRATEGIES,
    get_config,
)
from ddpm_keras.data import DataUnavailableError
from ddpm_keras.files import tile_images
from ddpm_keras.samplers import SAMPLER_NAMES, get_sampler
from ddpm_keras.schedule import SCHEDULE_NAMES

USER_ERRORS = (ValueError, DataUnavailableError, FileNotFoundError)


def train_parser():
    """Flags of `scripts/train.py` / `ddpm-train`; unset flags keep the preset's value."""
    parser = argparse.ArgumentParser(
        description="Train a DDPM on Fashion-MNIST (or another TFDS image dataset)."
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="smoke (seconds), cpu (~30 min on 2 cores), default (GPU), mnist (the cpu "
        "recipe on MNIST) or cifar10 (GPU); default: smoke/cpu/default chosen from the machine",
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float, help="peak Adam learning rate")
    parser.add_argument(
        "--learning-rate-schedule",
        choices=LEARNING_RATE_SCHEDULES,
        help="constant, or cosine decay to 0 over the run",
    )
    parser.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up steps")
    parser.add_argument("--ema-decay", type=float, help="decay of the EMA of the weights")
    parser.add_argument("--base-channels", type=int, help="channels of the UNet's first level")
    parser.add_argument(
        "--prediction", choices=PREDICTIONS, help="network target: epsilon, x0 or v"
    )
    parser.add_argument("--min-snr-gamma", type=float, help="min-SNR-gamma loss weighting, e.g. 5")
    parser.add_argument(
        "--class-conditional",
        action="store_true",
        default=None,
        help="train on (image, label) pairs for classifier-free guidance",
    )
    parser.add_argument(
        "--label-dropout", type=float, help="share of labels dropped in training (default 0.1)"
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        help="guidance of the sample grids of conditional models "
        f"(default {DEFAULT_GUIDANCE_SCALE:g})",
    )
    parser.add_argument(
        "--fid-every",
        type=int,
        help="FID of the samples every N epochs, in metrics.json (Fashion-MNIST; 0: never)",
    )
    parser.add_argument("--fid-num-samples", type=int, help="samples per FID (default 500)")
    parser.add_argument("--gradient-clip-norm", type=float, help="clip gradients to this L2 norm")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--schedule", choices=SCHEDULE_NAMES)
    parser.add_argument("--dataset", help="TFDS image dataset name (default fashion_mnist)")
    parser.add_argument("--max-train-examples", type=int)
    parser.add_argument("--output-dir", help="artifact directory")
    parser.add_argument(
        "--manual-dir",
        help="folder with the dataset's original .gz files, for offline use",
    )
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="log scalars and sample grids to <output-dir>/tensorboard",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="auto (several GPUs: mirrored), default (one device), mirrored, "
        "multiworker (cluster from TF_CONFIG) or tpu",
    )
    parser.add_argument(
        "--devices", nargs="+", help="devices for --strategy mirrored, e.g. GPU:0 GPU:1"
    )
    parser.add_argument("--precision", choices=PRECISIONS, help="dtype policy of the network")
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        default=None,
        help="compile the training step with XLA",
    )
    return parser


def config_from_args(args):
    """Builds the `DiffusionConfig` from parsed train flags."""
    overrides = vars(args).copy()
    preset = overrides.pop("preset")
    return get_config(preset, **overrides)


def sample_parser():
    """Flags of `scripts/sample.py` / `ddpm-sample`."""
    parser = argparse.ArgumentParser(description="Sample images from a saved DDPM.")
    parser.add_argument(
        "--model",
        default=os.path.join("artifacts", "tensorflow_diffusion", "model.keras"),
        help="saved .keras model (default: %(default)s)",
    )
    parser.add_argument("--num-images", type=int, default=36)
    parser.add_argument(
        "--steps", type=int, help="sampling steps (default: 50 for ddim, T for ddpm)"
    )
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim")
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
        help="class-conditional models: a grid with one row of this many images per class",
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


def user_errors_exit(main):
    """Turns expected failures of `main` into a one-line message on stderr.

    User errors (bad values, missing data or files) exit with status 2; a
    training run stopped by a non-finite loss exits with status 1.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except USER_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except NonFiniteLossError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return wrapper


@user_errors_exit
def train_main(argv=None):
    """Entry point of `ddpm-train`."""
    from ddpm_keras.training import train

    config = config_from_args(train_parser().parse_args(argv))
    train(config)
    print(f"Artifacts written to {config.output_dir}")
    return 0


@user_errors_exit
def sample_main(argv=None):
    """Entry point of `ddpm-sample` (and `scripts/sample.py`)."""
    from ddpm_keras.files import ensure_writable_dir, save_gif, save_image_grid
    from ddpm_keras.model import load_diffusion_model

    args = sample_parser().parse_args(argv)
    if not args.output.endswith(".png"):
        raise ValueError(f"`--output` must end in '.png'. Received: output={args.output!r}")
    if args.gif is not None and not args.gif.endswith(".gif"):
        raise ValueError(f"`--gif` must end in '.gif'. Received: gif={args.gif!r}")
    if args.gif_frames < 2:
        raise ValueError(f"`--gif-frames` must be >= 2. Received: gif_frames={args.gif_frames}")
    for path in (args.output, args.gif):
        if path is not None:
            ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
    model = load_diffusion_model(args.model)
    # Checks the sampler arguments before any work, and gives the real step count.
    steps = get_sampler(args.sampler, model.schedule, args.steps, args.eta).num_steps
    num_images, labels, columns = args.num_images, None, None
    if args.class_label is not None and args.per_class is not None:
        raise ValueError(
            "Give `--class` or `--per-class`, not both. "
            f"Received: class={args.class_label!r}, per_class={args.per_class}"
        )
    if args.per_class is not None:
        if args.per_class < 1 or model.num_classes is None:
            raise ValueError(
                "`--per-class` needs a class-conditional model and a count >= 1. "
                f"Received: per_class={args.per_class}"
            )
        columns = args.per_class
        labels = np.repeat(np.arange(model.num_classes), columns)
        num_images = len(labels)
    elif args.class_label is not None:
        label = args.class_label
        labels = model.label_ids(int(label) if label.isdigit() else label, num_images)
    guidance_scale = args.guidance_scale
    if guidance_scale is None:
        guidance_scale = DEFAULT_GUIDANCE_SCALE
    elif labels is None:
        raise ValueError(
            "`--guidance-scale` applies to labelled samples: give `--class` or `--per-class` "
            f"(of a class-conditional model). Received: guidance_scale={guidance_scale}"
        )
    recorder = ReverseProcessRecorder(
        num_images, args.batch_size, steps, args.gif_frames, columns=columns
    )
    use_callback = args.gif is not None or not args.no_progress
    images = model.generate(
        num_images,
        steps=args.steps,
        sampler=args.sampler,
        eta=args.eta,
        seed=args.seed,
        batch_size=args.batch_size,
        labels=labels,
        guidance_scale=guidance_scale,
        callback=recorder.progress(show_bar=not args.no_progress, keep_frames=bool(args.gif))
        if use_callback
        else None,
    )
    title = f"{args.sampler}, {steps} steps, seed {args.seed}"
    if labels is not None:
        title += f", guidance {guidance_scale:g}"
        if args.class_label is not None:
            title = f"{model.class_names[labels[0]]}: {title}"
    row_labels = None if args.per_class is None else model.class_names
    save_image_grid(images, args.output, title=title, columns=columns, row_labels=row_labels)
    print(f"Wrote {len(images)} samples to {args.output}")
    if args.gif:
        frames = recorder.frames()
        save_gif(frames, args.gif)
        print(f"Wrote the reverse process ({len(frames)} frames) to {args.gif}")
    return 0


class ReverseProcessRecorder:
    """Progress bar and GIF frames for `DiffusionModel.generate(callback=...)`.

    Args:
        num_images: Images generated (over all batches).
        batch_size: Images per batch.
        steps: The sampler's steps.
        num_frames: Frames to keep for a GIF: x_t after evenly spaced steps,
            from the first step to the last (the final samples).
        columns: Images per row of each frame (`None`: a square grid).
    """

    def __init__(self, num_images, batch_size, steps, num_frames, columns=None):
        import keras

        self.num_batches = -(-num_images // batch_size)
        self.columns = columns
        # Step indices whose x_t becomes a frame; the last step always does.
        self.frame_steps = set(
            np.linspace(0, steps - 1, min(num_frames, steps)).round().astype(int)
        )
        self._batches = {}  # step -> list of per-batch arrays
        self._progbar = keras.utils.Progbar(self.num_batches * steps, unit_name="step")

    def progress(self, show_bar=True, keep_frames=False):
        def callback(batch_index, step_index, samples):
            if show_bar:
                self._progbar.add(1)
            if keep_frames and step_index in self.frame_steps:
                self._batches.setdefault(step_index, []).append(samples)

        return callback

    def frames(self):
        """Tiled uint8 grids of every kept step, in order of the reverse process."""
        return [
            tile_images((np.concatenate(self._batches[step]) + 1.0) / 2.0, self.columns, padding=2)
            for step in sorted(self._batches)
        ]


DEFAULT_EVALUATION_SETTINGS = ("ddim:10", "ddim:25", "ddim:50", "ddim:100", "ddim:250", "ddpm:1000")


def evaluate_parser():
    """Flags of `scripts/evaluate.py` / `ddpm-evaluate`."""
    from ddpm_keras.features import EXTRACTORS

    parser = argparse.ArgumentParser(
        description="FID and KID of a saved DDPM for a grid of samplers and step counts."
    )
    parser.add_argument("--model", required=True, help="saved .keras model")
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
    parser.add_argument("--extractor", choices=EXTRACTORS, default="fmnist")
    parser.add_argument(
        "--inception-weights",
        default="imagenet",
        help="InceptionV3 no-top .h5 weights file for --extractor inception "
        "(default: download the ImageNet weights)",
    )
    parser.add_argument("--dataset", default="fashion_mnist", help="TFDS dataset of the model")
    parser.add_argument("--reference-split", default="test", help="split samples are compared to")
    parser.add_argument(
        "--floor-split",
        default="train",
        help="real images scored like samples, as the floor ('none': skip)",
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


@user_errors_exit
def evaluate_main(argv=None):
    """Entry point of `ddpm-evaluate` (and `scripts/evaluate.py`)."""
    from ddpm_keras.data import load_split_arrays
    from ddpm_keras.evaluation import SamplerSetting, evaluate_model, markdown_table
    from ddpm_keras.features import fmnist_card, fmnist_classifier, get_feature_extractor
    from ddpm_keras.files import ensure_writable_dir, write_json, write_text
    from ddpm_keras.model import load_diffusion_model

    args = evaluate_parser().parse_args(argv)
    settings = [SamplerSetting.parse(text) for text in args.settings]
    if args.num_samples < 2:
        raise ValueError(f"`--num-samples` must be >= 2. Received: {args.num_samples}")
    for scale in args.guidance_scales or ():
        if not 0.0 <= scale < math.inf:
            raise ValueError(f"`--guidance-scales` must be >= 0. Received: {scale}")
    ensure_writable_dir(args.output_dir)
    model = load_diffusion_model(args.model)
    if args.weights == "raw":
        # Sampling always uses ema_network; give it the raw weights.
        model.ema_network.set_weights(model.network.get_weights())
    for setting in settings:  # fail before any sampling, not after an hour of it
        get_sampler(setting.sampler, model.schedule, setting.steps, setting.eta)
    classifier = classifier_name = None
    if model.num_classes is None:
        if args.guidance_scales is not None:
            raise ValueError(
                "`--guidance-scales` needs a class-conditional model. "
                f"Received: {args.model} (unconditional)"
            )
    elif list(model.class_names) == fmnist_card()["label_names"]:
        classifier, classifier_name = fmnist_classifier(), "fmnist classifier"
    extractor = get_feature_extractor(args.extractor, model.image_shape, args.inception_weights)

    def split_images(split, max_examples):
        images, _, _ = load_split_arrays(
            args.dataset, split, args.data_dir, args.manual_dir, max_examples
        )
        if images.shape[1:] != model.image_shape:
            raise ValueError(
                f"The model makes {model.image_shape} images but {args.dataset} has "
                f"{images.shape[1:]}. Received: dataset={args.dataset!r}"
            )
        return (images + 1.0) / 2.0  # [-1, 1] -> [0, 1], what the extractor takes

    reference = split_images(args.reference_split, args.max_reference_examples)
    floor = None if args.floor_split == "none" else split_images(args.floor_split, None)
    print(
        f"Scoring {args.model}: {args.num_samples} samples per row against "
        f"{len(reference)} {args.dataset} {args.reference_split} images ({args.extractor} features)"
    )
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
    )
    table = markdown_table(
        rows, args.extractor, f"{args.dataset} {args.reference_split}", classifier_name
    )
    report = {
        "model": args.model,
        "extractor": args.extractor,
        "dataset": args.dataset,
        "reference_split": args.reference_split,
        "reference_examples": len(reference),
        "floor_split": args.floor_split,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "weights": args.weights,
        "classifier": classifier_name,
        "rows": rows,
    }
    write_json(os.path.join(args.output_dir, "evaluation.json"), report)
    write_text(os.path.join(args.output_dir, "evaluation.md"), table + "\n")
    print(f"\n{table}\n\nWrote {args.output_dir}/evaluation.json and evaluation.md")
    return 0
