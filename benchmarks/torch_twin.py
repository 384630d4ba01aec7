"""An independent PyTorch twin of ddpm_keras' UNet and diffusion maths.

The twin exists to check the Keras code against a second implementation
(tests/test_parity.py): with the same weights, the same inputs and the same
noise, both must agree to float32 rounding. It uses only PyTorch and NumPy,
so it imports without TensorFlow; `copy_keras_weights` imports Keras lazily.

Layout: the public interface is NHWC like Keras (`TorchUNet.forward` takes
and returns `[B, H, W, C]`); inside, tensors are NCHW as PyTorch expects.

Equation numbers refer to Ho, Jain & Abbeel 2020, "Denoising Diffusion
Probabilistic Models" (arXiv:2006.11239), "DDIM" to Song, Meng & Ermon 2021
(arXiv:2010.02502) and "cosine" to Nichol & Dhariwal 2021 (arXiv:2102.09672).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

#: Epsilon of every GroupNormalization in ddpm_keras.unet (PyTorch's default too).
GROUP_NORM_EPSILON = 1e-5


# Network ------------------------------------------------------------------


def same_padding(size, kernel_size, stride):
    """(before, after) padding of Keras/TensorFlow `padding="same"` on one axis.

    TensorFlow pads so that the output has `ceil(size / stride)` elements and
    puts the odd pixel, if any, *after*: a 3x3 stride-2 convolution on an even
    size pads (0, 1), which PyTorch's symmetric `padding=` cannot express.

    Args:
        size: Input length along the axis.
        kernel_size: Kernel length along the axis.
        stride: Stride along the axis.

    Returns:
        `(before, after)` pixel counts.
    """
    output_size = -(-size // stride)
    total = max((output_size - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """`nn.Conv2d` with Keras `padding="same"` for any stride (NCHW)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, features):
        (kernel_height, kernel_width), (stride_height, stride_width) = self.kernel_size, self.stride
        top, bottom = same_padding(features.shape[-2], kernel_height, stride_height)
        left, right = same_padding(features.shape[-1], kernel_width, stride_width)
        return super().forward(F.pad(features, (left, right, top, bottom)))


class SameConvTranspose2d(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` with Keras `padding="same"`: output = input * stride.

    A transposed convolution is the gradient of a convolution. Keras'
    `Conv2DTranspose(padding="same")` is the gradient of the "same" strided
    convolution from the `input * stride`-sized output, whose padding comes
    from `same_padding`. PyTorch's `padding=p` removes `p` pixels on both
    sides of the full `(input - 1) * stride + kernel` output, so we compute
    the full output and crop `(before, after)` ourselves, which also covers
    the asymmetric cases. (For kernel 4, stride 2 it equals `padding=1`.)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, features):
        full = super().forward(features)
        (kernel_height, kernel_width), (stride_height, stride_width) = self.kernel_size, self.stride
        out_height = features.shape[-2] * stride_height
        out_width = features.shape[-1] * stride_width
        top, _ = same_padding(out_height, kernel_height, stride_height)
        left, _ = same_padding(out_width, kernel_width, stride_width)
        return full[..., top : top + out_height, left : left + out_width]


def sinusoidal_embedding(timesteps, dim, max_period=10_000):
    """Transformer-style embedding of integer timesteps, `[B, dim]` float32.

    Same float32 arithmetic as `ddpm_keras.unet.SinusoidalEmbedding`:
    frequencies exp(-ln(max_period) * i / (dim/2)), then [sin | cos].
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32) / half
    frequencies = torch.exp(-math.log(max_period) * exponents)
    angles = timesteps.reshape(-1, 1).to(torch.float32) * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the projected time embedding added between.

    Attribute names are those of `ddpm_keras.unet.ResidualBlock`, which is
    how `copy_keras_weights` pairs the sublayers.
    """

    def __init__(self, in_channels, filters, embedding_dim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=GROUP_NORM_EPSILON)
        self.conv1 = SameConv2d(in_channels, filters, 3)
        self.time_projection = nn.Linear(embedding_dim, filters)
        self.norm2 = nn.GroupNorm(groups, filters, eps=GROUP_NORM_EPSILON)
        self.conv2 = SameConv2d(filters, filters, 3)
        # 1x1 convolution on the shortcut only when the channels change.
        self.shortcut = SameConv2d(in_channels, filters, 1) if in_channels != filters else None

    def forward(self, features, time_embedding):
        hidden = self.conv1(F.silu(self.norm1(features)))
        time_bias = self.time_projection(F.silu(time_embedding))
        hidden = hidden + time_bias[:, :, None, None]
        hidden = self.conv2(F.silu(self.norm2(hidden)))
        residual = self.shortcut(features) if self.shortcut is not None else features
        return residual + hidden


class SelfAttention2D(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection.

    Pixels become tokens in row-major (h, w) order, as Keras' reshape of NHWC
    does; scores are scaled by channels^-1/2 after the matmul, as in Keras.
    """

    def __init__(self, channels, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPSILON)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.projection = nn.Linear(channels, channels)

    def forward(self, features):
        batch, channels, height, width = features.shape
        # [B, C, H, W] -> [B, H*W, C]: token h * W + w, like NHWC -> [B, H*W, C].
        tokens = self.norm(features).flatten(2).transpose(1, 2)
        query, key, value = self.query(tokens), self.key(tokens), self.value(tokens)
        scores = torch.matmul(query, key.transpose(1, 2))
        weights = torch.softmax(scores * (channels**-0.5), dim=-1)
        attended = self.projection(torch.matmul(weights, value))
        return features + attended.transpose(1, 2).reshape(batch, channels, height, width)


class TorchUNet(nn.Module):
    """The UNet of `ddpm_keras.unet.build_unet`, layer for layer, in PyTorch.

    Top-level submodules carry the Keras layer names (`conv_in`,
    `down0_res0`, `mid_attention`, `up1_upsample`, ...), so the state-dict
    key `down0_res0.norm1.weight` is the Keras layer `down0_res0`, sublayer
    `norm1`, weight `gamma`.

    Args:
        image_shape: `(H, W, C)`.
        base_channels: Channels of the first level.
        channel_multipliers: Channel multiplier per level.
        num_res_blocks: Residual blocks per level (the decoder has one more).
        attention: Self-attention in the bottleneck.
        norm_groups: Groups of every GroupNorm.
    """

    def __init__(
        self,
        image_shape,
        base_channels=64,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=2,
        attention=True,
        norm_groups=8,
    ):
        super().__init__()
        _height, _width, image_channels = (int(d) for d in image_shape)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.base_channels = base_channels
        self.channel_multipliers = tuple(channel_multipliers)
        self.num_res_blocks = num_res_blocks
        self.attention = attention
        embedding_dim = base_channels * 4
        last_level = len(self.channel_multipliers) - 1

        self.time_dense1 = nn.Linear(base_channels, embedding_dim)
        self.time_dense2 = nn.Linear(embedding_dim, embedding_dim)
        self.conv_in = SameConv2d(image_channels, base_channels, 3)

        channels = base_channels
        skip_channels = [channels]
        for level, multiplier in enumerate(self.channel_multipliers):
            for block in range(num_res_blocks):
                filters = base_channels * multiplier
                self.add_module(
                    f"down{level}_res{block}",
                    ResidualBlock(channels, filters, embedding_dim, norm_groups),
                )
                channels = filters
                skip_channels.append(channels)
            if level != last_level:
                self.add_module(f"down{level}_conv", SameConv2d(channels, channels, 3, stride=2))
                skip_channels.append(channels)

        self.mid_res0 = ResidualBlock(channels, channels, embedding_dim, norm_groups)
        self.mid_attention = SelfAttention2D(channels, norm_groups) if attention else None
        self.mid_res1 = ResidualBlock(channels, channels, embedding_dim, norm_groups)

        for level in reversed(range(len(self.channel_multipliers))):
            for block in range(num_res_blocks + 1):
                filters = base_channels * self.channel_multipliers[level]
                # Input = concat([x, skip]) on channels, as Keras' Concatenate.
                in_channels = channels + skip_channels.pop()
                self.add_module(
                    f"up{level}_res{block}",
                    ResidualBlock(in_channels, filters, embedding_dim, norm_groups),
                )
                channels = filters
            if level != 0:
                self.add_module(
                    f"up{level}_upsample",
                    SameConvTranspose2d(channels, channels, 4, stride=2),
                )

        self.norm_out = nn.GroupNorm(norm_groups, channels, eps=GROUP_NORM_EPSILON)
        self.conv_out = SameConv2d(channels, image_channels, 3)
        self.reset_parameters_like_keras()

    def reset_parameters_like_keras(self):
        """Keras' initialisation instead of PyTorch's (parity tests overwrite it).

        Keras: Glorot-uniform kernels and zero biases; PyTorch: Kaiming-uniform
        (a=sqrt(5)) weights and uniform biases. The last conv of each residual
        block and the attention output projection start at zero, as in Keras.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                nn.init.zeros_(module.conv2.weight)
            elif isinstance(module, SelfAttention2D):
                nn.init.zeros_(module.projection.weight)

    def forward(self, noisy_images, timesteps):
        """Predicts the noise.

        Args:
            noisy_images: float `[B, H, W, C]` (NHWC, as in Keras).
            timesteps: int `[B]`.

        Returns:
            The predicted noise, `[B, H, W, C]`.
        """
        # Computed in float32, then cast to the weights' dtype (Keras: compute_dtype).
        time_embedding = sinusoidal_embedding(timesteps, self.base_channels)
        time_embedding = time_embedding.to(self.time_dense1.weight.dtype)
        time_embedding = F.silu(self.time_dense1(time_embedding))
        time_embedding = self.time_dense2(time_embedding)

        x = self.conv_in(noisy_images.permute(0, 3, 1, 2))  # NHWC -> NCHW
        skips = [x]
        last_level = len(self.channel_multipliers) - 1
        for level in range(len(self.channel_multipliers)):
            for block in range(self.num_res_blocks):
                x = getattr(self, f"down{level}_res{block}")(x, time_embedding)
                skips.append(x)
            if level != last_level:
                x = getattr(self, f"down{level}_conv")(x)
                skips.append(x)

        x = self.mid_res0(x, time_embedding)
        if self.mid_attention is not None:
            x = self.mid_attention(x)
        x = self.mid_res1(x, time_embedding)

        for level in reversed(range(len(self.channel_multipliers))):
            for block in range(self.num_res_blocks + 1):
                x = torch.cat([x, skips.pop()], dim=1)
                x = getattr(self, f"up{level}_res{block}")(x, time_embedding)
            if level != 0:
                x = getattr(self, f"up{level}_upsample")(x)

        x = self.conv_out(F.silu(self.norm_out(x)))
        return x.permute(0, 2, 3, 1)  # NCHW -> NHWC


def count_parameters(module):
    """Number of scalar parameters of a `torch.nn.Module`."""
    return sum(parameter.numel() for parameter in module.parameters())


# Keras -> PyTorch weights ---------------------------------------------------


def keras_to_torch_layout(weight_name, array):
    """Converts one Keras weight array to the layout of its PyTorch parameter.

    Keras stores Conv2D kernels HWIO and Conv2DTranspose kernels HW(out)(in);
    PyTorch wants Conv2d OIHW and ConvTranspose2d (in)(out)HW. Both are the
    same permutation (3, 2, 0, 1); no spatial flip is needed, because both
    frameworks define the transposed convolution as the gradient of the
    (cross-correlation) convolution with that same kernel. Dense kernels are
    (in, out), Linear weights (out, in). GroupNormalization's gamma/beta are
    GroupNorm's weight/bias unchanged.

    Args:
        weight_name: `"kernel"`, `"bias"`, `"gamma"` or `"beta"`.
        array: The Keras weight as a NumPy array.
    """
    if weight_name == "kernel":
        return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
    return array


def torch_to_keras_layout(weight_name, array):
    """Inverse of `keras_to_torch_layout` (e.g. to compare gradients)."""
    if weight_name == "kernel":
        return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    return array


# Keras weight name -> PyTorch parameter name.
_TORCH_NAMES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def pair_keras_weights(keras_network, torch_model):
    """Pairs every weight of a `build_unet` Keras model with a `TorchUNet` parameter.

    Layers are paired by name: the Keras top-level layer `down0_res0` with the
    submodule `down0_res0`, and inside composite layers the Keras attribute
    (`norm1`, `conv1`, `query`, ...) with the submodule of the same name.
    (Keras' own paths for sublayers, like `down0_res0/group_normalization_3`,
    carry global counters and differ between models, so they are not used.)

    Args:
        keras_network: The Keras model from `ddpm_keras.unet.build_unet`.
        torch_model: A `TorchUNet` built with the same arguments.

    Returns:
        A list of `(keras_variable, torch_parameter_name)`, in the order of
        `keras_network.weights`.

    Raises:
        ValueError: A Keras layer or weight has no PyTorch counterpart, a
            PyTorch parameter has no Keras weight, the layer types differ, or
            a converted shape differs.
    """
    import keras  # Lazily: the rest of this module runs without TensorFlow.

    leaf_types = {
        keras.layers.Dense: nn.Linear,
        keras.layers.Conv2DTranspose: nn.ConvTranspose2d,
        keras.layers.Conv2D: nn.Conv2d,
        keras.layers.GroupNormalization: nn.GroupNorm,
    }
    torch_parameters = dict(torch_model.named_parameters())
    torch_name_of = {}  # id(Keras variable) -> PyTorch parameter name

    def pair_leaf(keras_layer, module, prefix):
        torch_type = next(t for k, t in leaf_types.items() if isinstance(keras_layer, k))
        if not isinstance(module, torch_type):
            raise ValueError(
                f"Layer type mismatch at {prefix!r}: Keras {type(keras_layer).__name__} "
                f"needs a {torch_type.__name__}, got {type(module).__name__}"
            )
        for variable in keras_layer.weights:
            weight_name = variable.path.rsplit("/", 1)[-1]
            torch_name = f"{prefix}.{_TORCH_NAMES[weight_name]}"
            if torch_name not in torch_parameters:
                raise ValueError(
                    f"Keras weight {variable.path!r} has no PyTorch parameter {torch_name!r}"
                )
            converted = keras_to_torch_layout(weight_name, np.empty(tuple(variable.shape)))
            expected = tuple(torch_parameters[torch_name].shape)
            if converted.shape != expected:
                raise ValueError(
                    f"Shape mismatch: Keras {variable.path!r} {tuple(variable.shape)} "
                    f"converts to {converted.shape}, but PyTorch {torch_name!r} is {expected}"
                )
            torch_name_of[id(variable)] = torch_name

    def pair_layer(keras_layer, module, prefix):
        if isinstance(keras_layer, tuple(leaf_types)):
            pair_leaf(keras_layer, module, prefix)
            return
        # Composite layer: pair each PyTorch child with the Keras attribute.
        for child_name, child in module.named_children():
            keras_child = getattr(keras_layer, child_name, None)
            if not isinstance(keras_child, keras.layers.Layer):
                raise ValueError(
                    f"PyTorch module {prefix}.{child_name!r} has no Keras sublayer "
                    f"{child_name!r} in {keras_layer.name!r}"
                )
            pair_layer(keras_child, child, f"{prefix}.{child_name}")

    torch_children = dict(torch_model.named_children())
    for keras_layer in keras_network.layers:
        if not keras_layer.weights:
            continue
        module = torch_children.get(keras_layer.name)
        if module is None:
            raise ValueError(
                f"Keras layer {keras_layer.name!r} has no PyTorch counterpart "
                "(is the twin built with the same arguments?)"
            )
        pair_layer(keras_layer, module, keras_layer.name)

    unpaired_keras = [v.path for v in keras_network.weights if id(v) not in torch_name_of]
    if unpaired_keras:
        raise ValueError(f"Keras weights without a PyTorch parameter: {unpaired_keras}")
    unpaired_torch = sorted(set(torch_parameters) - set(torch_name_of.values()))
    if unpaired_torch:
        raise ValueError(f"PyTorch parameters without a Keras weight: {unpaired_torch}")
    return [(v, torch_name_of[id(v)]) for v in keras_network.weights]


def copy_keras_weights(keras_network, torch_model):
    """Copies every weight of a `build_unet` Keras model into a `TorchUNet`.

    Args:
        keras_network: The Keras model from `ddpm_keras.unet.build_unet`.
        torch_model: A `TorchUNet` built with the same arguments.

    Raises:
        ValueError: As `pair_keras_weights`, before anything is copied.
    """
    import keras

    torch_parameters = dict(torch_model.named_parameters())
    for variable, torch_name in pair_keras_weights(keras_network, torch_model):
        weight_name = variable.path.rsplit("/", 1)[-1]
        array = keras_to_torch_layout(weight_name, keras.ops.convert_to_numpy(variable))
        with torch.no_grad():
            torch_parameters[torch_name].copy_(torch.from_numpy(np.ascontiguousarray(array)))


# Noise schedule --------------------------------------------------------------


def linear_betas(timesteps, beta_start=1e-4, beta_end=0.02):
    """Linearly spaced betas (Ho et al. 2020, section 4), float64."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps, s=0.008, max_beta=0.999):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64.

    alpha_bar(t) = f(t) / f(0), f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2,
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at `max_beta`.
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / timesteps + s) / (1 + s)) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return torch.clamp(betas, 0.0, max_beta)


class TorchNoiseSchedule:
    """Betas, alpha-bars and the forward/posterior maths, in PyTorch.

    Tables are float64 tensors of length T (indexed by t = 0..T-1); like the
    Keras code, they are cast to float32 before being used on images.

    Args:
        name: `"linear"` or `"cosine"`.
        timesteps: Number of diffusion steps T.
        beta_start: First beta of the linear schedule.
        beta_end: Last beta of the linear schedule.
        cosine_s: Offset s of the cosine schedule.
    """

    def __init__(
        self, name="linear", timesteps=1000, beta_start=1e-4, beta_end=0.02, cosine_s=0.008
    ):
        if name == "linear":
            betas = linear_betas(timesteps, beta_start, beta_end)
        elif name == "cosine":
            betas = cosine_betas(timesteps, cosine_s)
        else:
            raise ValueError(f"Unknown schedule name: {name!r}")
        self.timesteps = timesteps
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        # alpha_bar_{t-1}, with alpha_bar_{-1} = 1.
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas = betas
        self.alphas = alphas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = alphas_cumprod_prev
        # Eq. 7: beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t.
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta~_0 = 0: replace it by beta~_1 before the log, as the reference code.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        # Eq. 7: mu~_t = coef1 * x_0 + coef2 * x_t.
        self.posterior_mean_coef1 = betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod)
        )

    @staticmethod
    def gather(table, t):
        """`table[t]` as float32, shaped `[B, 1, 1, 1]` to broadcast over images."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        return table.to(torch.float32)[t].reshape(-1, 1, 1, 1)

    def q_sample(self, x_0, t, noise):
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. 4, reparameterised)."""
        return (
            self.gather(torch.sqrt(self.alphas_cumprod), t) * x_0
            + self.gather(torch.sqrt(1.0 - self.alphas_cumprod), t) * noise
        )

    def predict_x0_from_noise(self, x_t, t, noise):
        """x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps (eq. 4 inverted)."""
        return (
            self.gather(torch.sqrt(1.0 / self.alphas_cumprod), t) * x_t
            - self.gather(torch.sqrt(1.0 / self.alphas_cumprod - 1.0), t) * noise
        )

    def q_posterior(self, x_0, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = (
            self.gather(self.posterior_mean_coef1, t) * x_0
            + self.gather(self.posterior_mean_coef2, t) * x_t
        )
        variance = self.gather(self.posterior_variance, t)
        log_variance = self.gather(self.posterior_log_variance_clipped, t)
        return mean, variance, log_variance


# Training loss -------------------------------------------------------------


def training_loss(network, schedule, x_0, t, noise):
    """The "simple" epsilon loss (eq. 14) for given timesteps and noise.

    Per-example mean of (eps - eps_theta(x_t, t))^2 over pixels, then the mean
    over the batch, as `DiffusionModel.train_step`.

    Args:
        network: `network(noisy_images, timesteps) -> predicted noise` (NHWC).
        schedule: A `TorchNoiseSchedule`.
        x_0: Clean images, float32 `[B, H, W, C]`.
        t: Timesteps, int `[B]`.
        noise: eps, float32 `[B, H, W, C]`.

    Returns:
        The scalar loss.
    """
    noisy_images = schedule.q_sample(x_0, t, noise)
    pred_noise = network(noisy_images, t)
    per_example = torch.mean((noise - pred_noise) ** 2, dim=(1, 2, 3))
    return torch.mean(per_example)


def torch_adam_epsilon_for_keras(keras_epsilon, beta_2, step):
    """PyTorch Adam `eps` that reproduces Keras Adam's update at `step` (1-based).

    Keras adds epsilon to sqrt(v) *before* bias correction
    (w -= lr sqrt(1 - b2^k) / (1 - b1^k) * m / (sqrt(v) + eps)); PyTorch adds
    it after (w -= lr / (1 - b1^k) * m / (sqrt(v) / sqrt(1 - b2^k) + eps)).
    The two agree when eps_torch = eps_keras / sqrt(1 - b2^k), a factor that
    changes every step (31.6 at step 1 with b2 = 0.999).
    """
    return keras_epsilon / math.sqrt(1.0 - beta_2**step)


# Samplers --------------------------------------------------------------------


class TorchDDPMSampler:
    """Ancestral sampling through all T steps (Ho et al. 2020, Algorithm 2).

    x_{t-1} = mu~(x_0, x_t) + sigma_t z with sigma_t^2 = beta~_t (eq. 7), x_0
    predicted from the noise and clipped to [-1, 1]; no noise at t = 0.
    """

    uses_noise = True

    def __init__(self, schedule, clip_denoised=True):
        self.schedule = schedule
        self.clip_denoised = clip_denoised
        self.timesteps = list(range(schedule.timesteps - 1, -1, -1))
        self.num_steps = schedule.timesteps

    def step(self, model_output, index, sample, noise):
        """x_{t-1} from x_t = `sample`, at t = `self.timesteps[index]`."""
        t = self.timesteps[index]
        pred_x0 = self.schedule.predict_x0_from_noise(sample, t, model_output)
        if self.clip_denoised:
            pred_x0 = torch.clamp(pred_x0, -1.0, 1.0)
        mean, _, log_variance = self.schedule.q_posterior(pred_x0, sample, t)
        nonzero = 1.0 if t > 0 else 0.0
        return mean + nonzero * torch.exp(0.5 * log_variance) * noise


class TorchDDIMSampler:
    """DDIM (Song et al. 2021, eq. 12) on `num_steps` evenly spread timesteps.

    x_{t'} = sqrt(a') x_0 + sqrt(1 - a' - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a') (eq. 16); a and a'
    are alpha-bar at t and at the previous timestep t' (1 after t = 0).
    """

    def __init__(self, schedule, num_steps=50, eta=0.0, clip_denoised=True):
        self.schedule = schedule
        self.num_steps = num_steps
        self.eta = float(eta)
        self.clip_denoised = clip_denoised
        self.uses_noise = self.eta > 0.0
        # Round half to even, as np.round.
        timesteps = torch.round(
            torch.linspace(schedule.timesteps - 1, 0, num_steps, dtype=torch.float64)
        ).to(torch.long)
        self.timesteps = timesteps.tolist()
        alphas_cumprod = schedule.alphas_cumprod
        self.alpha_bar = alphas_cumprod[timesteps]
        self.alpha_bar_prev = torch.cat(
            [alphas_cumprod[timesteps[1:]], torch.ones(1, dtype=torch.float64)]
        )
        self.sigma = (
            self.eta
            * torch.sqrt((1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar))
            * torch.sqrt(1.0 - self.alpha_bar / self.alpha_bar_prev)
        )

    def step(self, model_output, index, sample, noise):
        """x_{t'} from x_t = `sample`, at t = `self.timesteps[index]`."""
        t = self.timesteps[index]
        alpha_bar = self.alpha_bar[index].to(torch.float32)
        alpha_bar_prev = self.alpha_bar_prev[index].to(torch.float32)
        sigma = self.sigma[index].to(torch.float32)
        pred_x0 = self.schedule.predict_x0_from_noise(sample, t, model_output)
        if self.clip_denoised:
            pred_x0 = torch.clamp(pred_x0, -1.0, 1.0)
        # eps re-derived from the (clipped) x_0, as the Keras sampler does.
        pred_noise = (sample - torch.sqrt(alpha_bar) * pred_x0) / torch.sqrt(1.0 - alpha_bar)
        direction = torch.sqrt(torch.clamp(1.0 - alpha_bar_prev - sigma**2, min=0.0))
        prev_sample = torch.sqrt(alpha_bar_prev) * pred_x0 + direction * pred_noise
        if self.uses_noise:
            prev_sample = prev_sample + sigma * noise
        return prev_sample


@torch.no_grad()
def sample_loop(network, sampler, initial_noise, step_noises: Sequence | None = None):
    """Runs `sampler` from x_T = `initial_noise` down to x_0.

    Args:
        network: `network(samples, timesteps) -> predicted noise` (NHWC).
        sampler: A `TorchDDPMSampler` or `TorchDDIMSampler`.
        initial_noise: x_T, float32 `[B, H, W, C]`.
        step_noises: One noise tensor per step (step `i` uses
            `step_noises[i]`); may be `None` if the sampler uses no noise.

    Returns:
        The final samples, float32.
    """
    if sampler.uses_noise and (step_noises is None or len(step_noises) != sampler.num_steps):
        raise ValueError(f"The sampler needs {sampler.num_steps} per-step noises.")
    samples = initial_noise
    batch_size = initial_noise.shape[0]
    for index, timestep in enumerate(sampler.timesteps):
        timesteps = torch.full((batch_size,), timestep, dtype=torch.long)
        pred_noise = network(samples, timesteps)
        noise = step_noises[index] if sampler.uses_noise else torch.zeros_like(samples)
        samples = sampler.step(pred_noise, index, samples, noise)
    return samples
