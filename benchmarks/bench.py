"""Training and sampling throughput of the project's UNet: TensorFlow variants and the PyTorch twin.

Every variant runs in a fresh Python process, so that its peak resident
memory is its own and no variant's compiled code can speed up another. The
variants are interleaved: round 1 runs them in order, round 2 in reverse
order, and so on, so that whatever else the machine does hits them alike.

    python benchmarks/bench.py                         # cpu preset, TF and PyTorch, 3 rounds
    python benchmarks/bench.py --variants tf-float32 torch-eager --rounds 5
    python benchmarks/bench.py --variants tf-float32 tf-float32-real --manual-dir DIR
    python benchmarks/bench.py --ancestral --rounds 1  # adds 1000-step ancestral sampling
    python benchmarks/bench.py --smoke                 # seconds; what CI runs
    python benchmarks/bench.py --variants tf-float32 tf-mixed_bfloat16 torch-eager torch-bf16 \
        --sample-images 500                            # 16-bit against 16-bit, FID-sized sampling

Variants: `tf-<precision>[-xla]` (graph mode or XLA), `tf-float32-real` (the
real Fashion-MNIST pipeline of `ddpm_keras.data` instead of one in-memory
batch; needs `--manual-dir`), `torch-eager` and `torch-compile` (the twin in
`torch_twin.py`, same architecture, parameter count, batch, loss, Adam and
EMA; needs the `bench` extra), and `torch-bf16` (the eager twin under
`torch.autocast("cpu", torch.bfloat16)`, PyTorch's mixed precision: the
network's convolutions and matrix products in bfloat16, the weights, Adam
and EMA in float32, as Keras' `mixed_bfloat16`).

The ceiling: a 2048 x 2048 matmul in each framework, in float32, bfloat16
and float16; the faster framework's figure is the machine's ceiling at that
precision, and every row's GFLOP/s is given as a share of the ceiling of its
own precision.

Prints a Markdown table and writes it, with the raw numbers, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
TF_VARIANTS = tuple(f"tf-{p}{xla}" for p in PRECISIONS for xla in ("", "-xla"))
TORCH_VARIANTS = ("torch-eager", "torch-compile", "torch-bf16")
VARIANTS = (*TF_VARIANTS, "tf-float32-real", *TORCH_VARIANTS)
DEFAULT_VARIANTS = ("tf-float32", "tf-float32-xla", "torch-eager", "torch-compile")
# AVX2 cores with two 256-bit FMA units (AMD Zen 2 and 3): 2 FMA x 8 float32
# lanes x 2 FLOP = 32 FLOP per cycle per core. AVX-512 cores: 64, which
# assumes two 512-bit FMA units; cores with one (some Xeons) or with 256-bit
# units (Zen 4) reach half, so there the nominal peak is an upper bound.
FLOP_PER_CYCLE_PER_CORE = {"avx2": 32, "avx512f": 64}


CEILING_DTYPES = ("float32", "bfloat16", "float16")


def variant_precision(variant):
    """The arithmetic of a variant's convolutions: which matmul ceiling applies."""
    if "bf16" in variant or "bfloat16" in variant:
        return "bfloat16"
    return "float16" if "float16" in variant else "float32"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="network and batch of this preset")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, help=f"default: {' '.join(DEFAULT_VARIANTS)}"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--sample-images", type=int, default=64)
    parser.add_argument(
        "--sample-batch", type=int, default=64, help="images per sampling batch, both frameworks"
    )
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--ancestral", action="store_true", help="also time ancestral sampling")
    parser.add_argument("--manual-dir", help="Fashion-MNIST .gz files, for tf-float32-real")
    parser.add_argument("--data-dir", help="TFDS data dir, for tf-float32-real")
    parser.add_argument("--output", default="benchmark_results.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one variant's run
    parser.add_argument("--preset-json", help=argparse.SUPPRESS)  # internal: the preset's fields
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.rounds, args.steps, args.warmup = "smoke", 1, 2, 1
        args.sample_images, args.sample_steps, args.sample_batch = 4, 2, 4
        # torch.compile alone takes minutes to compile; the smoke skips it.
        args.variants = args.variants or ["tf-float32", "torch-eager"]
    args.variants = args.variants or list(DEFAULT_VARIANTS)
    for name in ("rounds", "steps", "warmup", "sample_images", "sample_batch", "sample_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if "tf-float32-real" in args.variants and not args.manual_dir:
        parser.error("tf-float32-real needs --manual-dir (the Fashion-MNIST .gz files)")
    return args


def peak_rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# TensorFlow ------------------------------------------------------------------


def measure_tensorflow(args, variant):
    """Runs in the child process: training steps through `fit`, then sampling."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ddpm_keras.config import get_config
    from ddpm_keras.model import build_model

    name = variant.removeprefix("tf-")
    real_data = name.endswith("-real")
    jit_compile = name.endswith("-xla")
    precision = name.removesuffix("-real").removesuffix("-xla")
    config = get_config(
        args.preset,
        precision=precision,
        jit_compile=jit_compile,
        manual_dir=args.manual_dir,
        data_dir=args.data_dir,
    )
    keras.utils.set_random_seed(0)
    if real_data:
        from ddpm_keras.data import load_dataset

        dataset, _, image_shape = load_dataset(config)
        dataset = dataset.repeat()
    else:
        image_shape = (28, 28, 1)
        images = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, *image_shape))
        dataset = tf.data.Dataset.from_tensors(images.astype("float32")).repeat()
    model = build_model(config, image_shape)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=jit_compile)

    step_ends = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step_ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(
        dataset,
        steps_per_epoch=args.warmup + args.steps,
        epochs=1,
        verbose=0,
        callbacks=[StepTimer()],
    )
    result = {
        # Set by ddpm_keras (imported by the parent) unless the caller chose.
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "parameters": model.network.count_params(),
        "batch_size": config.batch_size,
        "first_step_s": step_ends[0] - start,  # tracing (and XLA compilation) included
        "step_s": np.diff(step_ends[args.warmup - 1 :]).tolist(),
        "train_peak_rss_mib": peak_rss_mib(),
    }

    def sample(sampler, seed):
        return lambda: model.generate(
            args.sample_images,
            sampler=sampler,
            steps=sample_steps[sampler],
            seed=seed,
            batch_size=args.sample_batch,
        )

    sample_steps = {"ddim": args.sample_steps, "ddpm": config.timesteps}
    # The first call traces and compiles the sampling loop for this batch and
    # step count; the second is timed.
    sample("ddim", 0)()
    result["ddim_s"] = timed(sample("ddim", 1))
    if args.ancestral:
        sample("ddpm", 0)()
        result["ancestral_s"] = timed(sample("ddpm", 1))
    result["peak_rss_mib"] = peak_rss_mib()
    return result


# PyTorch ---------------------------------------------------------------------


def torch_network(config):
    sys.path.insert(0, HERE)
    from torch_twin import TorchUNet

    return TorchUNet(
        (28, 28, 1),
        config.base_channels,
        config.channel_multipliers,
        config.num_res_blocks,
        attention=config.attention,
        norm_groups=config.norm_groups,
    )


def measure_torch(args, variant):
    """Runs in the child process: the twin's training step, then sampling."""
    import numpy as np
    import torch
    from torch_twin import (
        TorchDDIMSampler,
        TorchDDPMSampler,
        TorchNoiseSchedule,
        sample_loop,
        training_loss,
    )

    config = argparse.Namespace(**json.loads(args.preset_json))
    torch.manual_seed(0)
    network = torch_network(config)
    compiled = variant == "torch-compile"
    compiled_network = torch.compile(network) if compiled else network
    if variant == "torch-bf16":

        def forward(*inputs):
            # The loss (in training_loss) is computed from the float32 output.
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled_network(*inputs).float()

    else:
        forward = compiled_network
    schedule = TorchNoiseSchedule(config.schedule, config.timesteps)
    # Keras' Adam epsilon; foreach Adam is PyTorch's default on CPU.
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, eps=1e-7)
    parameters = list(network.parameters())
    ema_parameters = [p.detach().clone() for p in parameters]
    images = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, 28, 28, 1))
    images = torch.from_numpy(images.astype("float32"))

    def train_step():
        t = torch.randint(0, config.timesteps, (config.batch_size,))
        loss = training_loss(forward, schedule, images, t, torch.randn_like(images))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # EMA, as DiffusionModel's
            torch._foreach_lerp_(ema_parameters, parameters, 1.0 - config.ema_decay)
        return loss.item()  # Keras' fit also reads the loss back every step

    start = time.perf_counter()
    step_ends = []
    for _ in range(args.warmup + args.steps):
        train_step()
        step_ends.append(time.perf_counter())
    result = {
        "parameters": sum(p.numel() for p in parameters),
        "batch_size": config.batch_size,
        "first_step_s": step_ends[0] - start,
        "step_s": np.diff(step_ends[args.warmup - 1 :]).tolist(),
        "train_peak_rss_mib": peak_rss_mib(),
    }

    network.eval()

    def sample(sampler, seed):
        def run():
            # In batches of --sample-batch, as model.generate samples.
            generator = torch.Generator().manual_seed(seed)
            for start in range(0, args.sample_images, args.sample_batch):
                shape = (min(args.sample_batch, args.sample_images - start), 28, 28, 1)
                initial = torch.randn(shape, generator=generator)
                noises = None
                if sampler.uses_noise:
                    noises = torch.randn((sampler.num_steps, *shape), generator=generator)
                with torch.inference_mode():
                    sample_loop(forward, sampler, initial, noises)

        return run

    ddim = TorchDDIMSampler(schedule, args.sample_steps)
    sample(ddim, 0)()  # warm-up (and, for torch.compile, compilation)
    result["ddim_s"] = timed(sample(ddim, 1))
    if args.ancestral:
        ancestral = TorchDDPMSampler(schedule)
        sample(ancestral, 0)()
        result["ancestral_s"] = timed(sample(ancestral, 1))
    result["peak_rss_mib"] = peak_rss_mib()
    # The memory figures are PyTorch's own only if TensorFlow never loaded.
    assert "tensorflow" not in sys.modules, "the PyTorch child imported TensorFlow"
    return result


# FLOPs and the machine's peak --------------------------------------------------


def count_flops(args):
    """FLOPs of one training step per image, and of one sampling step per image.

    Counted by PyTorch's FlopCounterMode on the twin (same layers and shapes
    as the Keras UNet): convolutions, transposed convolutions and matrix
    products, forward and backward, 2 FLOP per multiply-add. Elementwise
    work (GroupNorm, SiLU, the loss, Adam) is not counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = argparse.Namespace(**json.loads(args.preset_json))
    network = torch_network(config)
    images = torch.zeros(config.batch_size, 28, 28, 1)
    timesteps = torch.zeros(config.batch_size, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        network(images, timesteps).square().mean().backward()
    train = counter.get_total_flops() / config.batch_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(images, timesteps)
    forward = counter.get_total_flops() / config.batch_size
    return {"train_flop_per_image": train, "forward_flop_per_image": forward}


def cpu_peak_gflops():
    """Nominal float32 peak: cores x reported clock x FLOP per cycle (FMA width).

    The reported clock is not the boost clock, so a large matmul can beat it
    (see `measure_matmul_gflops`, the practical ceiling).
    """
    mhz = None
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("cpu MHz"):
                    mhz = float(line.split(":")[1])
                    break
    except OSError:
        pass
    if mhz is None:
        return None
    from ddpm_keras.precision import cpu_flags

    width = "avx512f" if "avx512f" in cpu_flags() else "avx2"
    return len(os.sched_getaffinity(0)) * mhz / 1000 * FLOP_PER_CYCLE_PER_CORE[width]


MATMUL_SIZE = 2048


def measure_matmul_gflops(framework):
    """Runs in a child: GFLOP/s of a large matmul per `CEILING_DTYPES` (the practical peak)."""
    size = MATMUL_SIZE
    if framework == "tf":
        import tensorflow as tf

        def matmul_of(dtype):
            a = tf.cast(tf.random.normal((size, size)), dtype)
            b = tf.cast(tf.random.normal((size, size)), dtype)
            matmul = tf.function(lambda: tf.matmul(a, b))
            return lambda: matmul().numpy()
    else:
        import torch

        def matmul_of(dtype):
            a = torch.randn(size, size).to(getattr(torch, dtype))
            b = torch.randn(size, size).to(getattr(torch, dtype))
            return lambda: torch.matmul(a, b)

    result = {}
    for dtype in CEILING_DTYPES:
        matmul = matmul_of(dtype)
        first = timed(matmul)
        # A precision without fast kernels (PyTorch's bfloat16 on AVX2 CPUs)
        # takes about a minute per matmul: its first call is the measurement.
        seconds = first if first > 5 else min(timed(matmul) for _ in range(5))
        result[dtype] = 2 * size**3 / seconds / 1e9
    return result


# Driver ----------------------------------------------------------------------


def preset_json(preset):
    """The preset's fields as JSON: PyTorch children read them without importing TensorFlow."""
    import dataclasses

    from ddpm_keras.config import get_config

    return json.dumps(dataclasses.asdict(get_config(preset)))


def run_child(kind, argv):
    command = [sys.executable, os.path.abspath(__file__), *argv, "--child", kind]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise SystemExit(f"benchmark child {kind!r} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_main(args):
    if args.child.startswith("matmul-"):
        return measure_matmul_gflops(args.child.removeprefix("matmul-"))
    if args.child == "flops":
        return count_flops(args)
    if args.child.startswith("torch-"):
        return measure_torch(args, args.child)
    return measure_tensorflow(args, args.child)


def spread(values):
    """`median (min-max)` of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def summarize(variant, runs, args, flops, ceilings=None):
    """Pools the rounds of one variant into one row."""
    step_times = [s for run in runs for s in run["step_s"]]
    batch_size = runs[0]["batch_size"]
    step_median, step_min, step_max = spread(step_times)
    ddim = [args.sample_images / run["ddim_s"] for run in runs]
    row = {
        "variant": variant,
        "parameters": runs[0]["parameters"],
        "batch_size": batch_size,
        "rounds": len(runs),
        "timed_steps": len(step_times),
        "step_s_median": step_median,
        "step_s_min": step_min,
        "step_s_max": step_max,
        "train_images_per_s": batch_size / step_median,
        "first_step_s": statistics.median(run["first_step_s"] for run in runs),
        "ddim_images_per_s": spread(ddim),
        "train_peak_rss_mib": max(run["train_peak_rss_mib"] for run in runs),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }
    if args.ancestral:
        row["ancestral_images_per_s"] = spread(
            [args.sample_images / r["ancestral_s"] for r in runs]
        )
    if flops:
        row["train_gflops"] = flops["train_flop_per_image"] * batch_size / step_median / 1e9
        ceiling = (ceilings or {}).get(variant_precision(variant))
        if ceiling:
            row["ceiling_share"] = row["train_gflops"] / ceiling
    return row


def markdown_table(rows, args):
    ancestral = args.ancestral
    header = (
        "| variant | train img/s | step s: median (min-max) | GFLOP/s | share of ceiling "
        "| first step s "
        f"| DDIM-{args.sample_steps} img/s: median (min-max) |"
        + (" ancestral img/s |" if ancestral else "")
        + " peak RSS MiB: train / +sampling |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        ddim = r["ddim_images_per_s"]
        cells = [
            r["variant"],
            f"{r['train_images_per_s']:.1f}",
            f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f})",
            f"{r['train_gflops']:.1f}" if "train_gflops" in r else "n/a",
            f"{100 * r['ceiling_share']:.0f}%" if "ceiling_share" in r else "n/a",
            f"{r['first_step_s']:.1f}",
            f"{ddim[0]:.1f} ({ddim[1]:.1f}-{ddim[2]:.1f})",
        ]
        if ancestral:
            cells.append("{:.2f} ({:.2f}-{:.2f})".format(*r["ancestral_images_per_s"]))
        cells.append(f"{r['train_peak_rss_mib']:.0f} / {r['peak_rss_mib']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_report(args, argv, torch_available):
    """The CPU, its nominal peak and the measured matmul ceilings (skipped by --smoke)."""
    from ddpm_keras.machine import cpu_fields
    from ddpm_keras.precision import cpu_flags

    flags = cpu_flags()
    machine = {
        "processor": platform.processor() or platform.machine(),
        **cpu_fields(),
        "flags_of_note": sorted(
            flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"}
        ),
        "cpus": len(os.sched_getaffinity(0)),
        "peak_gflops_nominal": cpu_peak_gflops(),
        "matmul_gflops": {},
        "matmul_ceiling_gflops": {},
    }
    if args.smoke:
        return machine
    frameworks = ["tf", "torch"] if torch_available else ["tf"]
    for framework in frameworks:
        machine["matmul_gflops"][framework] = run_child(f"matmul-{framework}", argv)
    for dtype in CEILING_DTYPES:
        machine["matmul_ceiling_gflops"][dtype] = max(
            machine["matmul_gflops"][f][dtype] for f in frameworks
        )
    return machine


def interleaved_order(variants, rounds):
    """Round 1 in order, round 2 reversed, ...: (round, variant) pairs."""
    for round_index in range(rounds):
        ordered = variants if round_index % 2 == 0 else variants[::-1]
        for variant in ordered:
            yield round_index, variant


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.child:
        argv = [*argv, "--preset-json", preset_json(args.preset)]
    if args.child:
        print(json.dumps(child_main(args)))
        return 0

    try:
        import torch  # noqa: F401
    except ImportError:
        if any(v.startswith("torch-") for v in args.variants):
            raise SystemExit("torch-* variants need PyTorch: pip install -e '.[bench]'") from None
        flops = None
    else:
        flops = run_child("flops", argv)
    runs = {variant: [] for variant in args.variants}
    for round_index, variant in interleaved_order(list(args.variants), args.rounds):
        run = run_child(variant, argv)
        runs[variant].append(run)
        print(
            f"round {round_index + 1}/{args.rounds} {variant}: "
            f"step {statistics.median(run['step_s']):.3f} s, DDIM {run['ddim_s']:.1f} s",
            flush=True,
        )
    machine = machine_report(args, argv, torch_available=flops is not None)
    rows = [
        summarize(variant, runs[variant], args, flops, machine["matmul_ceiling_gflops"])
        for variant in args.variants
    ]
    parameter_counts = {row["variant"]: row["parameters"] for row in rows}
    if len(set(parameter_counts.values())) != 1:
        raise SystemExit(f"The variants' networks differ in size: {parameter_counts}")

    table = markdown_table(rows, args)
    print(
        f"\n{args.preset} preset, batch {rows[0]['batch_size']}, {rows[0]['parameters']:,} "
        f"parameters; {args.rounds} interleaved rounds x {args.steps} timed steps; "
        f"DDIM-{args.sample_steps} of {args.sample_images} images in batches of {args.sample_batch}"
    )
    if flops:
        print(
            f"FLOP per image: training step {flops['train_flop_per_image'] / 1e9:.3f} G, "
            f"forward {flops['forward_flop_per_image'] / 1e9:.3f} G"
        )
    print(f"machine: {json.dumps(machine)}\n\n{table}")
    from ddpm_keras.files import write_json

    write_json(
        args.output,
        {
            "args": vars(args),
            "machine": machine,
            "flops": flops,
            "rows": rows,
            "runs": runs,
            "table": table,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
