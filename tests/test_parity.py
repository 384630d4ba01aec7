"""Parity with an independent PyTorch twin (benchmarks/torch_twin.py).

With the same weights, inputs and noise, the Keras UNet, loss, Adam step,
schedule and samplers must agree with the PyTorch twin to float32 rounding.
No bound is a measurement of one machine: float32 kernels differ between CPUs
(oneDNN and PyTorch pick other blockings and summation orders on AVX2 and
AVX-512), and so do NumPy's and PyTorch's float64 cos and log. Instead:

* Float32 network results (outputs, loss, gradients, Adam step, sampling)
  are compared with the twin run in float64 on the same weights and inputs
  (exact in float64, so that run is the true answer to ~1e-15). Keras's
  error from it must be within ROUNDING_RATIO times the float32 twin's own
  error, the size of float32 rounding for this computation on the CPU that
  runs the test. Both errors are sums of many roundings of the same terms,
  only in other orders, so they are of one size (measured Keras / twin: 0.9
  to 1.4). A real difference (an epsilon, a missing bias, a transposed
  kernel, an off-by-one t) is an error of its own size, not float32's.
* Float64 schedule tables get per-index bounds from the ulps of cos and log
  and the cancellation in beta = 1 - ratio (`schedule_bounds`).
* Element-wise float32 arithmetic on float32 tables is exact when the tables
  agree, and within a float32 ulp of each coefficient where one rounds the
  other way.

Errors are relative to the largest reference magnitude:
max|actual - reference| / max|reference|.
"""

import copy

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

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.2e-7; an ulp of x is <= eps * |x|
FLOAT64_EPS = float(np.finfo(np.float64).eps)  # 2.2e-16
# Keras's float32 error may be this many times the float32 twin's (see above).
ROUNDING_RATIO = 8


def relative_error(actual, reference):
    """max|actual - reference| / max|reference|, as a Python float."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


def assert_float32_rounding(keras_result, twin_result, exact, floor=FLOAT32_EPS, what=""):
    """Keras's error from the float64 `exact` is of the size of the float32 twin's.

    Both errors relative to max|exact|; `floor` keeps a lucky (near-zero)
    twin error from setting the scale.
    """
    keras_error = relative_error(keras_result, exact)
    twin_error = relative_error(twin_result, exact)
    allowed = ROUNDING_RATIO * max(twin_error, floor)
    assert keras_error <= allowed, (what, keras_error, twin_error)


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
def twin64(twin):
    """The twin in float64: the exact answer to the float32 computations."""
    return copy.deepcopy(twin).double()


def float64_inputs(*arrays):
    """`torch_inputs`, with floating arrays in float64."""
    return [a.double() if a.is_floating_point() else a for a in torch_inputs(*arrays)]


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


def test_network_outputs_agree(keras_network, twin, twin64, batch):
    images, timesteps, _ = batch
    expected = keras_network([images, timesteps], training=False).numpy()
    with torch.no_grad():
        actual = twin(*torch_inputs(images, timesteps)).numpy()
        exact = twin64(*float64_inputs(images, timesteps)).numpy()
    assert actual.shape == expected.shape == (BATCH_SIZE,) + IMAGE_SHAPE
    # Measured (AMD EPYC, AVX2): Keras 4.8e-7 to 6.1e-7 (oneDNN's threads
    # vary the order) and the float32 twin 5.4e-7 from exact, ~4 eps32 each.
    assert_float32_rounding(expected, actual, exact)


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


def test_training_loss_agrees(keras_network, twin, twin64, batch):
    images, timesteps, noises = batch
    keras_schedule = NoiseSchedule("linear", 1000)
    torch_schedule = torch_twin.TorchNoiseSchedule("linear", 1000)
    expected, _ = keras_loss_and_gradients(keras_network, keras_schedule, images, timesteps, noises)
    with torch.no_grad():
        actual = torch_twin.training_loss(
            twin, torch_schedule, *torch_inputs(images, timesteps, noises)
        ).item()
        exact = torch_twin.training_loss(
            twin64, torch_schedule, *float64_inputs(images, timesteps, noises)
        ).item()
    # A scalar: its own float32 rounding (eps32 / 2) is the floor.
    assert_float32_rounding(float(expected), actual, exact)


def test_gradients_agree(keras_network, twin, twin64, batch):
    images, timesteps, noises = batch
    _, keras_gradients = keras_loss_and_gradients(
        keras_network, NoiseSchedule("linear", 1000), images, timesteps, noises
    )
    torch_schedule = torch_twin.TorchNoiseSchedule("linear", 1000)
    for model, inputs in ((twin, torch_inputs), (twin64, float64_inputs)):
        model.zero_grad()
        torch_twin.training_loss(
            model, torch_schedule, *inputs(images, timesteps, noises)
        ).backward()
    keras_gradient_of = {
        variable.path: gradient.numpy()
        for variable, gradient in zip(keras_network.trainable_weights, keras_gradients, strict=True)
    }
    exact = paired_twin_arrays(keras_network, twin64, "grad")
    twin_errors, keras_errors = {}, {}
    for path, (torch_gradient, _) in paired_twin_arrays(keras_network, twin, "grad").items():
        twin_errors[path] = relative_error(torch_gradient, exact[path][0])
        keras_errors[path] = relative_error(keras_gradient_of[path], exact[path][0])
    twin.zero_grad()
    twin64.zero_grad()
    # Against the twin's worst tensor: one tensor's error on one side can be
    # lucky (a ratio of 2.9 per tensor against the twin's median was seen).
    # Measured (AMD EPYC, AVX2): worst tensor 2.8e-6 for Keras, 3.1e-6 for
    # the twin; medians 1.0e-6 and 9.6e-7.
    scale = max(max(twin_errors.values()), FLOAT32_EPS)
    worst = max(keras_errors, key=keras_errors.get)
    assert keras_errors[worst] <= ROUNDING_RATIO * scale, (worst, keras_errors[worst], scale)


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
    # The same step in float64: the exact update (with the matched epsilon,
    # Keras's update).
    twin64_model = copy.deepcopy(twin_model).double()
    losses = {}
    for model, inputs in ((twin_model, torch_inputs), (twin64_model, float64_inputs)):
        optimizer = torch.optim.Adam(
            model.parameters(), lr=learning_rate, betas=(beta_1, beta_2), eps=torch_epsilon
        )
        loss = torch_twin.training_loss(
            model,
            torch_twin.TorchNoiseSchedule("linear", 1000),
            *inputs(images, timesteps, noises),
        )
        loss.backward()
        optimizer.step()
        losses[model] = loss.item()
    assert_float32_rounding(keras_loss, losses[twin_model], losses[twin64_model])

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
        # The step-1 update lr * g / (|g| + eps') (eps' = 3.2e-6 here) has
        # slope up to 1 / eps' in g, so the gradients' float32 rounding
        # (~1e-8 absolute) reaches ~1e-3 lr on weights with |g| ~ eps', on
        # either side alike: measured (AMD EPYC, AVX2) 1.2e-3 lr for Keras and
        # 8.7e-4 lr for the float32 twin from the float64 step. Floor: the
        # float32 rounding of the largest weight itself (1.8e-4 lr).
        exact = paired_twin_arrays(network, twin64_model, "data")
        twin_weights = paired_twin_arrays(network, twin_model, "data")

        def worst_error(weight_of):
            return max(
                float(np.max(np.abs(weight_of(path) - exact_weight)))
                for path, (exact_weight, _) in exact.items()
            )

        keras_error = worst_error(lambda path: exact[path][1].numpy()) / learning_rate
        twin_error = worst_error(lambda path: twin_weights[path][0]) / learning_rate
        largest_weight = max(float(np.max(np.abs(w.numpy()))) for w in network.weights)
        floor = FLOAT32_EPS * largest_weight / learning_rate
        assert keras_error <= ROUNDING_RATIO * max(twin_error, floor), (keras_error, twin_error)
    else:
        # Same epsilon value, different placement: measured 0.70 lr (0.89 lr
        # with PyTorch's default 1e-8), median 0.06 lr: far above rounding.
        assert update_errors[worst] > 0.1, (worst, update_errors[worst])


# Schedule ----------------------------------------------------------------


# NumPy's and PyTorch's float64 cos and log are each within a few ulps of
# exact: NumPy's AVX-512 build (SVML) promises <= 4 ulps, PyTorch's Sleef
# <= 1 ulp, so the two differ by <= 5 ulps (relative 5 eps64).
LIBM_ULPS = 5
TABLES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def schedule_bounds(schedule):
    """Per-index bounds on |torch - keras| / |keras| for each float64 table.

    First-order propagation of the differences between the two computations,
    with eps = FLOAT64_EPS and every basic operation correctly rounded (error
    <= eps / 2 on each side). Only cos, log and linspace differ between the
    two; everything else is the same formula on slightly different inputs.
    """
    eps, betas, alphas = FLOAT64_EPS, schedule.betas, schedule.alphas
    if schedule.name == "cosine":
        # The cos arguments are bitwise equal (the same +, *, / in the same
        # order); the cos values differ by <= K = LIBM_ULPS ulps. f = cos^2
        # doubles that, and the ratio r_t = alpha_bar_t / alpha_bar_{t-1} =
        # f_t / f_{t-1} (f_0 cancels) takes it from both ends: 4K eps, plus
        # five roundings on each side: (4K + 5) eps relative in r_t. Then
        # beta_t = 1 - r_t cancels digits: the absolute error stays
        # (4K + 5) eps r_t (the subtraction is exact for r >= 1/2, else one
        # more rounding of beta), so relative to beta it is amplified by
        # r_t / beta_t: 1.3e-10 at t = 0 (beta 4e-5), 2.8e-12 at t = 352 (beta 2e-3,
        # where an AVX-512 run measured 1.1e-13), 6e-15 where beta = 0.5.
        beta_error = (4 * LIBM_ULPS + 5) * eps * alphas + eps * betas
    else:
        # linspace: start + i * step or end - (T - 1 - i) * step, a few
        # roundings of terms <= beta_t: 4 eps relative covers both.
        beta_error = 4 * eps * betas
    d_beta = beta_error / betas
    d_alpha = beta_error / alphas + eps  # alpha = 1 - beta, one rounding
    # A cumulative product: relative errors add up, plus one rounding per
    # product on each side.
    d_alpha_bar = np.cumsum(d_alpha) + eps * np.arange(schedule.timesteps)
    alpha_bar, alpha_bar_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    d_alpha_bar_prev = np.append(0.0, d_alpha_bar[:-1])  # alpha_bar_{-1} = 1 exactly
    # 1 - a amplifies a's relative error by a / (1 - a). At t = 0, 1 - 1 = 0
    # exactly on both sides, and so are the tables that it multiplies.
    d_one_minus = d_alpha_bar * alpha_bar / (1 - alpha_bar) + eps
    d_one_minus_prev = np.zeros_like(d_one_minus)
    d_one_minus_prev[1:] = d_alpha_bar_prev[1:] * alpha_bar_prev[1:] / (1 - alpha_bar_prev[1:])
    d_one_minus_prev += eps
    # beta (1 - a') / (1 - a): two more roundings on each side.
    d_variance = d_beta + d_one_minus_prev + d_one_minus + 2 * eps
    d_variance_clipped = np.append(d_variance[1], d_variance[1:])
    return {
        "betas": d_beta,
        "alphas_cumprod": d_alpha_bar,
        "alphas_cumprod_prev": d_alpha_bar_prev,
        "posterior_variance": d_variance,
        # log: the argument's relative error becomes an absolute one, plus
        # the two logs' ulps.
        "posterior_log_variance_clipped": d_variance_clipped
        / np.abs(schedule.posterior_log_variance_clipped)
        + LIBM_ULPS * eps,
        # A sqrt (correctly rounded on both sides) halves a relative error;
        # sqrt, product and quotient: three roundings on each side.
        "posterior_mean_coef1": d_beta + d_alpha_bar_prev / 2 + d_one_minus + 3 * eps,
        "posterior_mean_coef2": d_one_minus_prev + d_alpha / 2 + d_one_minus + 3 * eps,
    }


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_tables_agree(name):
    keras_schedule = NoiseSchedule(name, 1000)
    torch_schedule = torch_twin.TorchNoiseSchedule(name, 1000)
    bounds = schedule_bounds(keras_schedule)
    for table in TABLES:
        expected = getattr(keras_schedule, table)
        actual = getattr(torch_schedule, table).numpy()
        allowed = bounds[table] * np.abs(expected)
        error = np.abs(actual - expected)
        worst = int(np.argmax(error / np.where(allowed > 0, allowed, np.inf)))
        assert np.all(error <= allowed), (table, worst, error[worst], allowed[worst])
        # The bound is far below any real difference: a t off by one breaks
        # it almost everywhere (all but the clipped ends of the tables).
        shifted = np.abs(expected[1:] - expected[:-1]) > allowed[:-1]
        assert np.mean(shifted) > 0.99, (table, np.mean(shifted))
    # No float32 check: tables within 1e-9 relative round to float32 values
    # at most one float32 ulp apart, which the float64 check implies.


def assert_within_float32_ulps_of_terms(actual, expected, terms):
    """|actual - expected| <= 3 eps32 * terms, element-wise.

    For a sum of products of float32 coefficients: each coefficient is the
    float32 rounding of float64 values that agree to ~1e-10 (above), so it
    is equal on both sides or, at a rounding boundary, one ulp (<= eps32 of
    it) away; the products and the sum then round (<= eps32 / 2 each, on
    each side). Both frameworks multiply and add with correctly rounded
    float32 operations, so equal coefficients give equal results.
    """
    error = np.abs(np.asarray(actual) - np.asarray(expected))
    assert np.all(error <= 3 * FLOAT32_EPS * terms), np.max(error / terms)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_and_posterior_agree(name, batch):
    images, timesteps, noises = batch
    keras_schedule = NoiseSchedule(name, 1000)
    torch_schedule = torch_twin.TorchNoiseSchedule(name, 1000)
    x_0, t, eps = torch_inputs(images, timesteps, noises)

    def coefficient(table):
        return table[timesteps].astype("float32").reshape(-1, 1, 1, 1)

    x_t = torch_schedule.q_sample(x_0, t, eps).numpy()
    alpha_bar = keras_schedule.alphas_cumprod
    assert_within_float32_ulps_of_terms(
        x_t,
        keras_schedule.q_sample(images, timesteps, noises).numpy(),
        np.abs(coefficient(np.sqrt(alpha_bar)) * images)
        + np.abs(coefficient(np.sqrt(1 - alpha_bar)) * noises),
    )
    mean, variance, log_variance = torch_schedule.q_posterior(x_0, torch.from_numpy(x_t), t)
    expected = keras_schedule.q_posterior(images, x_t, timesteps)
    assert_within_float32_ulps_of_terms(
        mean.numpy(),
        expected[0].numpy(),
        np.abs(coefficient(keras_schedule.posterior_mean_coef1) * images)
        + np.abs(coefficient(keras_schedule.posterior_mean_coef2) * x_t),
    )
    # Gathered float32 table values: equal, or one ulp apart (see above).
    np.testing.assert_array_max_ulp(variance.numpy(), expected[1].numpy(), maxulp=1)
    np.testing.assert_array_max_ulp(log_variance.numpy(), expected[2].numpy(), maxulp=1)


# Sampling ----------------------------------------------------------------

SAMPLING_T = 20


def test_ddim_sampling_agrees(keras_network, twin, twin64):
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
    exact = torch_twin.sample_loop(twin64, torch_sampler, torch.from_numpy(initial).double())
    # The float64 run uses the same float32 sampler coefficients. Measured
    # (AMD EPYC, AVX2): Keras 3.9e-7, the float32 twin 3.2e-7 from it.
    assert_float32_rounding(expected, actual, exact.numpy())


def test_ddpm_sampling_agrees(keras_network, twin, twin64):
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
    exact = torch_twin.sample_loop(
        twin64,
        torch_sampler,
        torch.from_numpy(initial).double(),
        [torch.from_numpy(n).double() for n in step_noises],
    ).numpy()
    # Measured (AMD EPYC, AVX2): Keras 4.6e-7, the float32 twin 5.2e-7 from
    # exact; scaling one step's noise by 1.001 gives 3e-5.
    assert_float32_rounding(expected, actual, exact)
