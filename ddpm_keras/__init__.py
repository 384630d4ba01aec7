"""ddpm-keras: Denoising Diffusion Probabilistic Models in Keras 3 / TensorFlow."""

import os

# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with
# AVX-512 VNNI/BF16 or AMX. On AVX2 CPUs (e.g. the 2-core AMD EPYC of
# BENCHMARKS.md) they make the UNet's training step about 20% faster. The
# variable is read when TensorFlow loads, so this works only if ddpm_keras is
# imported first (the scripts do); TF_ENABLE_ONEDNN_OPTS=0 turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from ddpm_keras.config import DiffusionConfig, get_config
from ddpm_keras.data import load_dataset
from ddpm_keras.distribute import is_chief, make_strategy
from ddpm_keras.errors import ConfigError, DataUnavailableError
from ddpm_keras.model import DiffusionModel, build_model, load_diffusion_model
from ddpm_keras.pipeline import SamplingPipeline, SamplingSettings
from ddpm_keras.pretrained import load_pretrained
from ddpm_keras.samplers import DDIMSampler, DDPMSampler, get_sampler
from ddpm_keras.schedule import NoiseSchedule
from ddpm_keras.training import generate_samples, train
from ddpm_keras.unet import build_unet

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DDIMSampler",
    "DDPMSampler",
    "DataUnavailableError",
    "DiffusionConfig",
    "DiffusionModel",
    "NoiseSchedule",
    "SamplingPipeline",
    "SamplingSettings",
    "build_model",
    "build_unet",
    "generate_samples",
    "get_config",
    "get_sampler",
    "is_chief",
    "load_dataset",
    "load_diffusion_model",
    "load_pretrained",
    "make_strategy",
    "train",
]
