"""Parity with an independent PyTorch twin (benchmarks/torch_twin.py).

With the same weights, inputs and noise, the Keras UNet, loss, Adam step,
schedule and samplers must agree with the PyTorch twin to float32 rounding.
Every bound below is a few times the error measured on this machine (2-core
x86 CPU, TF 2.21 with oneDNN, torch 2.13.0+cpu); the measurement is in the
comment next to it. Errors are relative to the largest reference magnitude:
max|keras - torch| / max|keras|.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed: pip install torch==2.13.0")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import torch_twin  # noqa: E402
from ddpm_keras.model import DiffusionModel  # noqa: E402
from ddpm_keras.samplers import get_sampler  # noqa: E402
from ddpm_keras.sampling_loop import sample_loop  # noqa: E402
from ddpm_keras.schedule import NoiseSchedule  # noqa: E402
from ddpm_keras.unet import build_unet  # noqa: E402

# Non-square, 3-channel images catch H/W and channel-order mix-ups; three
# levels give two strided convolutions and two transposed ones.
IMAGE_SHAPE = (16, 8, 3)
UNET_ARGS = {
    "base_channels": 8,
    "channel_multipliers": (1, 2, 2),
    "num_res_blocks": 1,
    "attention": True,
    "norm_groups": 4,
}
BATCH_SIZE = 4


def relative_error(actual, reference):
    """max|actual - reference| / max|reference|, as a Python float."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


def randomize_weights(network, seed):
    """Random weights everywhere, so that zero-initialised layers count too.

    Kernels ~ N(0, 1 / fan_in), gammas ~ 1 + N(0, 0.2^2), biases and betas
    ~ N(0, 0.1^2).
    """
    rng = np.random.default_rng(seed)
    for variable in network.weights:
        shape = tuple(variable.shape)
        kind = variable.path.rsplit("/", 1)[-1]
        if kind == "kernel":
            values = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif kind == "gamma":
            values = 1.0 + 0.2 * rng.normal(size=shape)
        else:
            values = 0.1 * rng.normal(size=shape)
        variable.assign(values.astype("float32"))


@pytest.fixture(scope="module")
def keras_network():
    network = build_unet(IMAGE_SHAPE, **UNET_ARGS, name="parity_unet")
    randomize_weights(network, seed=0)
    return network


@pytest.fixture(scope="module")
def twin(keras_network):
    model = torch_twin.TorchUNet(IMAGE_SHAPE, **UNET_ARGS)
    torch_twin.copy_keras_weights(keras_network, model)
    return model


@pytest.fixture(scope="module")
def batch():
    """x_0 in [-1, 1], timesteps over the whole range (T = 1000) and eps."""
    rng = np.random.default_rng(1)
    images = rng.uniform(-1.0, 1.0, size=(BATCH_SIZE,) + IMAGE_SHAPE).astype("float32")
    timesteps = np.array([0, 17, 500, 999], dtype="int32")
    noises = rng.normal(size=(BATCH_SIZE,) + IMAGE_SHAPE).astype("float32")
    return images, timesteps, noises


def torch_inputs(*arrays):
    """NumPy -> torch; integer arrays become int64 (PyTorch's index type)."""
    return [
        torch.from_numpy(a.astype("int64") if a.dtype.kind == "i" else a.copy()) for a in arrays
    ]


# Network -----------------------------------------------------------------


def test_parameter_counts_are_equal(keras_network, twin):
    assert torch_twin.count_parameters(twin) == keras_network.count_params() == 71_547


def test_copy_rejects_a_twin_with_other_shapes(keras_network):
    wider = torch_twin.TorchUNet(IMAGE_SHAPE, **{**UNET_ARGS, "base_channels": 16})
    with pytest.raises(ValueError, match=r"Shape mismatch: Keras 'time_dense1/kernel'"):
        torch_twin.copy_keras_weights(keras_network, wider)


def test_copy_rejects_unmatched_layers_both_ways(keras_network):
    # Keras has attention weights the twin lacks...
    no_attention = torch_twin.TorchUNet(IMAGE_SHAPE, **{**UNET_ARGS, "attention": False})
    with pytest.raises(ValueError, match=r"'mid_attention' has no PyTorch counterpart"):
        torch_twin.copy_keras_weights(keras_network, no_attention)
    # ... and the twin has parameters no Keras weight sets.
    keras_without_attention = build_unet(IMAGE_SHAPE, **{**UNET_ARGS, "attention": False})
    with_attention = torch_twin.TorchUNet(IMAGE_SHAPE, **UNET_ARGS)
    with pytest.raises(ValueError, match=r"without a Keras weight: \['mid_attention\.key\.bias'"):
        torch_twin.copy_keras_weights(keras_without_attention, with_attention)


def test_network_outputs_agree(keras_network, twin, batch):
    images, timesteps, _ = batch
    expected = keras_network([images, timesteps], training=False).numpy()
    with torch.no_grad():
        actual = twin(*torch_inputs(images, timesteps)).numpy()
    assert actual.shape == expected.shape == (BATCH_SIZE,) + IMAGE_SHAPE
    # Measured 3.8e-7 to 6.9e-7 (float32 epsilon: 1.2e-7); each side is ~3e-7
    # from a float64 run of the twin, so neither framework is the exact one.
    assert relative_error(actual, expected) < 3e-6


# Training ----------------------------------------------------------------


class FixedDrawDiffusionModel(DiffusionModel):
    """A DiffusionModel whose training step uses given timesteps and noise."""

    def __init__(self, *args, fixed_timesteps, fixed_noises, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_timesteps = tf.constant(fixed_timesteps)
        self.fixed_noises = tf.constant(fixed_noises)

    def _draw_timesteps_and_noises(self, images):
        return self.fixed_timesteps, self.fixed_noises


def keras_loss_and_gradients(network, schedule, images, timesteps, noises):
    """Loss and gradients exactly as DiffusionModel.train_step computes them."""
    timesteps = tf.constant(timesteps)
    with tf.GradientTape() as tape:
        noisy_images = schedule.q_sample(images, timesteps, noises)
        pred_noises = network([noisy_images, timesteps], training=True)
        per_example = tf.reduce_mean(tf.square(noises - pred_noises), axis=[1, 2, 3])
        loss = tf.nn.compute_average_loss(per_example)
    return loss.numpy(), tape.gradient(loss, network.trainable_weights)


def paired_twin_arrays(keras_network, twin_model, attribute):
    """{Keras path: (twin parameter's `attribute` in Keras layout, Keras variable)}.

    Skips mid_attention's key bias: it adds the same amount to every score of
    a softmax row, so its true gradient is 0 and both frameworks return
    rounding noise (~1e-9), which Adam then turns into arbitrary updates.
    """
    parameters = dict(twin_model.named_parameters())
    arrays = {}
    for variable, torch_name in torch_twin.pair_keras_weights(keras_network, twin_model):
        if torch_name == "mid_attention.key.bias":
            continue
        value = getattr(parameters[torch_name], attribute).detach().numpy()
        weight_name = variable.path.rsplit("/", 1)[-1]
        arrays[variable.path] = (torch_twin.torch_to_keras_layout(weight_name, value), variable)
    return arrays


def test_training_loss_agrees(keras_network, twin, batch):
    images, timesteps, noises = batch
    keras_schedule = NoiseSchedule("linear", 1000)
    torch_schedule = torch_twin.TorchNoiseSchedule("linear", 1000)
    expected, _ = keras_loss_and_gradients(keras_network, keras_schedule, images, timesteps, noises)
    with torch.no_grad():
        actual = torch_twin.training_loss(
            twin, torch_schedule, *torch_inputs(images, timesteps, noises)
        ).item()
    # Measured 0 (bit-identical); float32 rounding would be ~1e-7.
    assert abs(actual - expected) / expected < 1e-6


def test_gradients_agree(keras_network, twin, batch):
    images, timesteps, noises = batch
    _, keras_gradients = keras_loss_and_gradients(
        keras_network, NoiseSchedule("linear", 1000), images, timesteps, noises
    )
    twin.zero_grad()
    torch_twin.training_loss(
        twin,
        torch_twin.TorchNoiseSchedule("linear", 1000),
        *torch_inputs(images, timesteps, noises),
    ).backward()
    keras_gradient_of = {
        variable.path: gradient.numpy()
        for variable, gradient in zip(keras_network.trainable_weights, keras_gradients, strict=True)
    }
    errors = {
        path: relative_error(torch_gradient, keras_gradient_of[path])
        for path, (torch_gradient, _) in paired_twin_arrays(keras_network, twin, "grad").items()
    }
    twin.zero_grad()
    # Measured: worst tensor 2.5e-6 (down0_res0's first GroupNorm beta), median 1.1e-6.
    worst = max(errors, key=errors.get)
    assert errors[worst] < 2e-5, (worst, errors[worst])


LEARNING_RATE, BETA_1, BETA_2, KERAS_EPSILON = 1e-3, 0.9, 0.999, 1e-7


@pytest.fixture(scope="module")
def keras_after_one_step(keras_network, batch):
    """A copy of `keras_network` after one DiffusionModel training step, and the loss.

    `run_eagerly=True` runs the project's own train_step without tracing it
    (tracing the UNet's backward pass takes over a minute on 2 cores).
    """
    images, timesteps, noises = batch
    network = keras.models.clone_model(keras_network)
    network.set_weights(keras_network.get_weights())
    model = FixedDrawDiffusionModel(
        network,
        NoiseSchedule("linear", 1000),
        fixed_timesteps=timesteps,
        fixed_noises=noises,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(
            LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2, epsilon=KERAS_EPSILON
        ),
        run_eagerly=True,
    )
    loss = model.train_on_batch(images, return_dict=True)["loss"]
    return network, float(loss)


@pytest.mark.parametrize("matched_epsilon", [True, False])
def test_one_adam_step_agrees(keras_network, keras_after_one_step, batch, matched_epsilon):
    """One step of DiffusionModel's training (Keras Adam) vs torch.optim.Adam.

    Keras Adam's epsilon defaults to 1e-7 and PyTorch's to 1e-8; both are
    set to 1e-7 here. Keras also adds it to sqrt(v) *before* bias correction,
    PyTorch after, so equal values are not the same update: the matched run
    gives PyTorch eps = 1e-7 / sqrt(1 - beta_2) (torch_adam_epsilon_for_keras).
    """
    images, timesteps, noises = batch
    network, keras_loss = keras_after_one_step
    learning_rate, beta_1, beta_2, keras_epsilon = LEARNING_RATE, BETA_1, BETA_2, KERAS_EPSILON
    twin_model = torch_twin.TorchUNet(IMAGE_SHAPE, **UNET_ARGS)
    torch_twin.copy_keras_weights(keras_network, twin_model)
    weights_before = keras_network.get_weights()

    torch_epsilon = (
        torch_twin.torch_adam_epsilon_for_keras(keras_epsilon, beta_2, step=1)
        if matched_epsilon
        else keras_epsilon
    )
    optimizer = torch.optim.Adam(
        twin_model.parameters(), lr=learning_rate, betas=(beta_1, beta_2), eps=torch_epsilon
    )
    loss = torch_twin.training_loss(
        twin_model,
        torch_twin.TorchNoiseSchedule("linear", 1000),
        *torch_inputs(images, timesteps, noises),
    )
    loss.backward()
    optimizer.step()
    # Measured 0 (bit-identical).
    assert abs(loss.item() - keras_loss) / keras_loss < 1e-6

    # Weight differences in units of the learning rate (the size of a step-1
    # Adam update).
    update_errors = {
        path: float(np.max(np.abs(torch_weight - variable.numpy())) / learning_rate)
        for path, (torch_weight, variable) in paired_twin_arrays(
            network, twin_model, "data"
        ).items()
    }
    worst = max(update_errors, key=update_errors.get)
    moved = max(
        float(np.max(np.abs(w.numpy() - before)))
        for w, before in zip(network.weights, weights_before, strict=True)
    )
    assert moved > 0.5 * learning_rate  # The step did update the weights.
    if matched_epsilon:
        # Measured 2.0e-3 lr, median 3e-5 lr: the update lr * m / (sqrt(v) + eps)
        # of the few weights with |gradient| ~ eps amplifies gradient rounding.
        assert update_errors[worst] < 1e-2, (worst, update_errors[worst])
    else:
        # Same epsilon value, different placement: measured 0.70 lr (0.89 lr
        # with PyTorch's default 1e-8), median 0.06 lr: far above rounding.
        assert update_errors[worst] > 0.1, (worst, update_errors[worst])


# Schedule ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_tables_agree(name):
    keras_schedule = NoiseSchedule(name, 1000)
    torch_schedule = torch_twin.TorchNoiseSchedule(name, 1000)
    for table in (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    ):
        expected = getattr(keras_schedule, table)
        actual = getattr(torch_schedule, table).numpy()
        # float64: measured 6e-16 (linear), 3.2e-14 (cosine: torch.cos and
        # np.cos differ by an ulp, and beta = 1 - ratio cancels digits).
        np.testing.assert_allclose(actual, expected, rtol=1e-13, atol=0, err_msg=table)
        # float32, as used on images: measured identical everywhere.
        np.testing.assert_array_equal(
            actual.astype("float32"), expected.astype("float32"), err_msg=table
        )


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_and_posterior_agree(name, batch):
    images, timesteps, noises = batch
    keras_schedule = NoiseSchedule(name, 1000)
    torch_schedule = torch_twin.TorchNoiseSchedule(name, 1000)
    x_0, t, eps = torch_inputs(images, timesteps, noises)

    x_t = torch_schedule.q_sample(x_0, t, eps)
    np.testing.assert_array_equal(
        x_t.numpy(), keras_schedule.q_sample(images, timesteps, noises).numpy()
    )
    mean, variance, log_variance = torch_schedule.q_posterior(x_0, x_t, t)
    expected = keras_schedule.q_posterior(images, x_t.numpy(), timesteps)
    # Measured 0 (the same float32 multiply-adds); allow rounding.
    assert relative_error(mean.numpy(), expected[0].numpy()) < 1e-6
    np.testing.assert_array_equal(variance.numpy(), expected[1].numpy())
    np.testing.assert_array_equal(log_variance.numpy(), expected[2].numpy())


# Sampling ----------------------------------------------------------------

SAMPLING_T = 20


def test_ddim_sampling_agrees(keras_network, twin):
    """Deterministic DDIM (eta = 0) from the same x_T, through sampling_loop.sample_loop."""
    rng = np.random.default_rng(2)
    initial = rng.normal(size=(BATCH_SIZE,) + IMAGE_SHAPE).astype("float32")
    sampler = get_sampler("ddim", NoiseSchedule("linear", SAMPLING_T), steps=10)

    def denoise(samples, timesteps):
        return keras_network([samples, timesteps], training=False)

    expected = tf.function(
        lambda x_t: sample_loop(denoise, sampler, x_t, tf.constant(0, tf.int64)), autograph=False
    )(tf.constant(initial)).numpy()
    torch_sampler = torch_twin.TorchDDIMSampler(
        torch_twin.TorchNoiseSchedule("linear", SAMPLING_T), num_steps=10
    )
    assert torch_sampler.timesteps == sampler.timesteps.tolist()
    actual = torch_twin.sample_loop(twin, torch_sampler, torch.from_numpy(initial)).numpy()
    # Measured 4.2e-7 (35% of the pixels end clipped at +-1 and agree exactly).
    assert relative_error(actual, expected) < 3e-6


def test_ddpm_sampling_agrees(keras_network, twin):
    """Ancestral sampling with the same x_T and the same noise at every step."""
    rng = np.random.default_rng(3)
    shape = (BATCH_SIZE,) + IMAGE_SHAPE
    initial = rng.normal(size=shape).astype("float32")
    step_noises = [rng.normal(size=shape).astype("float32") for _ in range(SAMPLING_T)]
    sampler = get_sampler("ddpm", NoiseSchedule("linear", SAMPLING_T))

    # One traced graph for the network (eager Keras calls are slow); the
    # sampler's step runs eagerly on the given noise.
    denoise = tf.function(lambda samples, t: keras_network([samples, t], training=False))
    samples = tf.constant(initial)
    for index, timestep in enumerate(sampler.timesteps):
        pred_noises = denoise(samples, tf.fill([BATCH_SIZE], timestep))
        samples, _ = sampler.step(pred_noises, index, samples, step_noises[index])
    expected = samples.numpy()

    torch_sampler = torch_twin.TorchDDPMSampler(torch_twin.TorchNoiseSchedule("linear", SAMPLING_T))
    actual = torch_twin.sample_loop(
        twin, torch_sampler, torch.from_numpy(initial), [torch.from_numpy(n) for n in step_noises]
    ).numpy()
    # Measured 4.8e-7; scaling one step's noise by 1.001 gives 3e-5.
    assert relative_error(actual, expected) < 3e-6
