"""Feature extractors for FID/KID: a Fashion-MNIST classifier and InceptionV3.

An extractor maps images in [0, 1] (`[N, H, W, C]`, the range
`DiffusionModel.generate` returns) to one float64 feature row per image:

    extractor = get_feature_extractor("fmnist")
    features = extractor(model.generate(1000))     # [1000, extractor.feature_dim]

- `fmnist` (default for Fashion-MNIST models): the penultimate layer of a
  small Fashion-MNIST classifier trained by `scripts/train_classifier.py`,
  whose weights, accuracy and reference statistics ship in
  `ddpm_keras/assets/`. Offline and fast on a CPU: a domain FID. Images of
  another size or in colour (garments exported to a folder, say) are resized
  to 28x28 grey first.
- `inception`: InceptionV3's 2048-d pool features (`keras.applications`,
  ImageNet weights), images resized to 299x299 and grey repeated to RGB: the
  FID that papers report. Fetches its weights on first use, or reads a
  local weights file.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from ddpm_keras.errors import ConfigError, DataUnavailableError

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
FMNIST_WEIGHTS = os.path.join(ASSETS_DIR, "fmnist_classifier.weights.h5")
FMNIST_CARD = os.path.join(ASSETS_DIR, "fmnist_classifier.json")
EXTRACTORS = ("fmnist", "inception")


def fmnist_reference_path(split):
    """The committed feature statistics of a Fashion-MNIST split ("train" or "test")."""
    if split not in ("train", "test"):
        raise ConfigError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    return os.path.join(ASSETS_DIR, f"fmnist_{split}_statistics.npz")


def build_fmnist_classifier(feature_dim=128):
    """The Fashion-MNIST classifier: 3 conv stages, global pooling, 2 dense layers.

    Takes `[N, 28, 28, 1]` images in [-1, 1] and returns 10 logits; the
    layer named "features" (ReLU, `feature_dim` units) feeds FID.
    """
    layers = keras.layers
    inputs = keras.Input((28, 28, 1), name="images")
    x = inputs
    for stage, filters in enumerate((16, 32, 64)):
        for index in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(name=f"stage{stage}_bn{index}")(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x) if stage < 2 else layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    features = layers.Dense(feature_dim, activation="relu", name="features")(x)
    logits = layers.Dense(10, name="logits")(layers.Dropout(0.3)(features))
    return keras.Model(inputs, logits, name="fmnist_classifier")


class FeatureExtractor:
    """Maps images in [0, 1] to float64 feature rows, in batches.

    Args:
        model: A Keras model from images in [-1, 1] (the networks' input
            range) to `[N, feature_dim]` features.
        name: The extractor's name ("fmnist", "inception").
        batch_size: Images per forward pass.
    """

    def __init__(self, model, name, batch_size=256):
        if batch_size < 1:
            raise ConfigError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.image_shape = tuple(model.inputs[0].shape[1:])
        self.feature_dim = int(model.outputs[0].shape[-1])

    def __call__(self, images):
        """Features of `[N, H, W, C]` images in [0, 1], float64 `[N, feature_dim]`."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ConfigError(
                f"Images must be [N, {', '.join(map(str, self.image_shape))}] for the "
                f"'{self.name}' extractor. Received: images.shape={images.shape}"
            )
        # A [-1, 1] array passed by mistake would score as garbage, silently.
        if images.size and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
            raise ConfigError(
                "Images must be in [0, 1] (what `DiffusionModel.generate` returns). "
                f"Received: values in [{images.min():.3f}, {images.max():.3f}]"
            )
        features = self.model.predict(images * 2.0 - 1.0, batch_size=self.batch_size, verbose=0)
        return np.asarray(features, dtype=np.float64)


FMNIST_IMAGE_SHAPE = (28, 28, 1)


class FmnistPreprocessing(keras.layers.Layer):
    """Images in [-1, 1] to the classifier's 28x28 grey: antialiased resize, luminance."""

    def call(self, images):
        if images.shape[-1] == 3:
            images = keras.ops.image.rgb_to_grayscale(images)
        if tuple(images.shape[1:3]) != FMNIST_IMAGE_SHAPE[:2]:
            images = keras.ops.image.resize(
                images, FMNIST_IMAGE_SHAPE[:2], interpolation="bilinear", antialias=True
            )
        return images


def _fmnist_input(model, image_shape):
    """`model` (on 28x28 grey) behind `FmnistPreprocessing`, for images of `image_shape`."""
    image_shape = tuple(image_shape)
    if image_shape == FMNIST_IMAGE_SHAPE:
        return model
    if len(image_shape) != 3 or image_shape[-1] not in (1, 3):
        raise ConfigError(
            "The 'fmnist' extractor takes grey or RGB images (resized to 28x28 grey). "
            f"Received: image_shape={image_shape}"
        )
    inputs = keras.Input(image_shape)
    return keras.Model(inputs, model(FmnistPreprocessing()(inputs)))


def fmnist_extractor(weights_path=FMNIST_WEIGHTS, batch_size=256, image_shape=FMNIST_IMAGE_SHAPE):
    """The committed Fashion-MNIST classifier's "features" layer.

    Args:
        weights_path: The classifier's weights.
        batch_size: Images per forward pass.
        image_shape: The images' `(H, W, C)`; other than 28x28x1, they are
            resized to 28x28 grey first (`FmnistPreprocessing`).
    """
    classifier = fmnist_classifier(weights_path)
    model = keras.Model(classifier.input, classifier.get_layer("features").output)
    return FeatureExtractor(_fmnist_input(model, image_shape), "fmnist", batch_size)


def _class_key(name):
    # "T-shirt/top" exported as a folder "T-shirt_top" is the same class.
    return name.lower().replace("/", "_").replace(" ", "_")


def fmnist_classifier_for(image_shape, class_names):
    """The committed classifier as logits over `class_names`, in their order, or `None`.

    For a class-conditional model whose classes are Fashion-MNIST's, in any
    order and spelled as folder names ("T-shirt_top"): its images (of
    `image_shape`, in [-1, 1]) are resized as `fmnist_extractor` does, and the
    logits follow the model's class ids. `None` if the classes differ.
    """
    fmnist_names = fmnist_card()["label_names"]
    keys = [_class_key(name) for name in fmnist_names]
    if sorted(_class_key(name) for name in class_names) != sorted(keys):
        return None
    order = [keys.index(_class_key(name)) for name in class_names]
    model = _fmnist_input(fmnist_classifier(), image_shape)
    inputs = keras.Input(tuple(image_shape))
    logits = keras.ops.take(model(inputs), order, axis=-1)
    return keras.Model(inputs, logits, name="fmnist_classifier")


def fmnist_classifier(weights_path=FMNIST_WEIGHTS):
    """The committed Fashion-MNIST classifier (logits), weights loaded."""
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"No classifier weights at {weights_path}. Train them with "
            "`python scripts/train_classifier.py --manual-dir DIR`."
        )
    classifier = build_fmnist_classifier()
    classifier.load_weights(weights_path)
    return classifier


def fmnist_card():
    """What `scripts/train_classifier.py` recorded: accuracy, epochs, seed."""
    with open(FMNIST_CARD) as file:
        return json.load(file)


@keras.saving.register_keras_serializable(package="ddpm_keras")
class InceptionPreprocessing(keras.layers.Layer):
    """Resizes images in [-1, 1] to 299x299 and repeats grey to 3 channels.

    InceptionV3 expects RGB in [-1, 1] (its `preprocess_input`), which is
    already the diffusion model's range; bilinear resizing as in TF-GAN.
    """

    def call(self, images):
        images = keras.ops.image.resize(images, (299, 299), interpolation="bilinear")
        if images.shape[-1] == 1:
            images = keras.ops.repeat(images, 3, axis=-1)
        return images


def inception_extractor(image_shape=(28, 28, 1), weights="imagenet", batch_size=64):
    """InceptionV3 pool features (2048-d) for images of `image_shape`.

    Args:
        image_shape: `(H, W, C)` with C = 1 or 3.
        weights: "imagenet" (Keras downloads them once, to ~/.keras), a path
            to the no-top weights file
            (`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`), or
            `None` for random weights (tests only: such an FID means nothing).
        batch_size: Images per forward pass.
    """
    if weights not in ("imagenet", None) and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"No InceptionV3 weights file at {weights}. Pass weights='imagenet' to "
            "download them, or the path of the no-top .h5 file."
        )
    inputs = keras.Input(image_shape)
    inception = keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(299, 299, 3), pooling="avg"
    )
    if weights is not None:
        path = weights
        if weights == "imagenet":
            try:
                path = keras.utils.get_file(
                    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    "https://storage.googleapis.com/tensorflow/keras-applications/"
                    "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    cache_subdir="models",
                    file_hash="bcbd6486424b2319ff4ef7d526e38f63",
                )
            except Exception as error:
                raise DataUnavailableError(
                    "Could not fetch the InceptionV3 ImageNet weights (offline?). "
                    "Download the no-top .h5 file elsewhere and pass its path as "
                    "`weights` (--inception-weights), or use the 'fmnist' extractor."
                ) from error
        inception.load_weights(path)
    model = keras.Model(inputs, inception(InceptionPreprocessing()(inputs)))
    return FeatureExtractor(model, "inception", batch_size)


def get_feature_extractor(name="fmnist", image_shape=(28, 28, 1), inception_weights="imagenet"):
    """An extractor by name, for images of `image_shape`: "fmnist" or "inception"."""
    if name == "fmnist":
        return fmnist_extractor(image_shape=image_shape)
    if name == "inception":
        return inception_extractor(image_shape, inception_weights)
    raise ConfigError(f"`extractor` must be one of {EXTRACTORS}. Received: extractor={name!r}")


def default_extractor(image_shape, training_data):
    """The extractor a model is scored with unless one is named: "fmnist" for Fashion-MNIST.

    Args:
        image_shape: The model's `(H, W, C)`.
        training_data: `DiffusionModel.training_data` (`None`: unknown, as
            for models saved before it was recorded).

    Raises:
        ConfigError: for other data, naming the flags that choose.
    """
    dataset = None if training_data is None else training_data.get("dataset")
    if tuple(image_shape) == FMNIST_IMAGE_SHAPE and (
        training_data is None or dataset == "fashion_mnist"
    ):
        return "fmnist"
    source = (
        "unknown data"
        if training_data is None
        else f"image_dir={training_data['image_dir']!r}"
        if "image_dir" in training_data
        else f"dataset={dataset!r}"
    )
    raise ConfigError(
        "The committed 'fmnist' features are a Fashion-MNIST classifier's, for "
        f"Fashion-MNIST models; this model was trained on {source}. Pass --extractor "
        "inception (InceptionV3, ImageNet weights; offline: --inception-weights FILE), or "
        "--extractor fmnist if its images are Fashion-MNIST garments (at another size, "
        f"they are resized to 28x28 grey). Received: image_shape={tuple(image_shape)}"
    )
