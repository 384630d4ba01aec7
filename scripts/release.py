"""Train, export, score and document the released models, one step per command.

    python scripts/release.py train --name fashion-mnist --manual-dir ../shared/data/fashion-mnist
    python scripts/release.py export --name fashion-mnist
    python scripts/release.py evaluate --name fashion-mnist --manual-dir ../shared/data/fashion-mnist
    python scripts/release.py card

Every step can be re-run: `train` resumes an interrupted run (and the card says
so), `export` and `evaluate` overwrite their files atomically. Each training
run lives in `runs/release/<name>/`, with `release.json` recording every
invocation of `train` (its command, commit, CPU and wall time); `export`
copies that record, with the run's config and epochs, beside the released
file. The card, `ddpm_keras/assets/pretrained/MODEL_CARD.md`, is rendered
from those records and the evaluation reports, never typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ddpm_keras.evaluation import row_label  # noqa: E402
from ddpm_keras.files import write_json, write_text  # noqa: E402
from ddpm_keras.machine import cpu_description  # noqa: E402
from ddpm_keras.pretrained import MODEL_CARD, PRETRAINED_DIR  # noqa: E402

RUNS = os.path.join("runs", "release")
# What each released model is trained with (train.py flags) and scored on
# (ddpm-evaluate rows at N samples; the ancestral sampler's 1000 steps get
# fewer samples, in a report of their own).
RELEASES = {
    "fashion-mnist": {
        "train_flags": ["--preset", "release"],
        "evaluations": {
            "main": {
                "num_samples": 10_000,
                # Cheapest first: an interrupted evaluation has the most rows.
                "settings": ["dpmpp_2m:10", "dpmpp_2m:20", "ddim:25", "ddim:50", "ddim:100"],
            },
            "ancestral": {"num_samples": 1_000, "settings": ["ddpm:1000"]},
        },
    },
    "fashion-mnist-conditional": {
        "train_flags": ["--preset", "release", "--class-conditional"],
        "evaluations": {
            "main": {
                "num_samples": 10_000,
                "settings": ["ddim:50"],
                # The two unguided rows, then the CLI's default scale (3), then
                # 2; the card lists them by scale. FID falls from 1 to 2 and
                # rises again at 3, so the sweep brackets its best scale.
                "guidance_scales": [0, 1, 3, 2],
            },
        },
    },
}


def git_commit():
    result = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


def run_dir(name):
    return os.path.join(RUNS, name)


def train_command(name, data_flags):
    return [
        "python",
        "scripts/train.py",
        *RELEASES[name]["train_flags"],
        "--output-dir",
        run_dir(name),
        *data_flags,
    ]


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def train(name, data_flags):
    """Runs (or resumes) the training command; records the invocation in release.json."""
    command = train_command(name, data_flags)
    record_path = os.path.join(run_dir(name), "release.json")
    os.makedirs(run_dir(name), exist_ok=True)
    record = read_json(record_path, {"name": name, "command": shlex.join(command)})
    invocation = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_description(),
    }
    record.setdefault("invocations", []).append(invocation)
    write_json(record_path, record)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, check=False)
    invocation["seconds"] = round(time.perf_counter() - start, 1)
    invocation["exit_code"] = result.returncode
    write_json(record_path, record)
    return result.returncode


def export(name):
    """Writes the released file; records its parameter count and size in release.json."""
    from ddpm_keras.pretrained import export_pretrained, load_pretrained

    path, size = export_pretrained(os.path.join(run_dir(name), "model.keras"), name)
    record = read_json(os.path.join(run_dir(name), "release.json"))
    record["config"] = read_json(os.path.join(run_dir(name), "config.json"))
    record["history"] = read_json(os.path.join(run_dir(name), "metrics.json"), [])
    record["export"] = {
        "parameters": load_pretrained(name).network.count_params(),
        "file_bytes": size,
    }
    write_json(release_record_path(name), record)
    print(f"Wrote {path} ({size / 1e6:.1f} MB) and {release_record_path(name)}")
    return 0


def release_record_path(name):
    """The run's record beside the card: release.json plus its config and epochs."""
    return os.path.join(PRETRAINED_DIR, f"{name}.release.json")


def evaluation_path(name, kind):
    suffix = "" if kind == "main" else f".{kind}"
    return os.path.join(PRETRAINED_DIR, f"{name}{suffix}.evaluation.json")


def evaluate_command(name, kind):
    """The `ddpm-evaluate` command of one report, as the card shows it (no data paths)."""
    evaluation = RELEASES[name]["evaluations"][kind]
    command = ["ddpm-evaluate", "--pretrained", name]
    command += ["--num-samples", str(evaluation["num_samples"])]
    command += ["--settings", *evaluation["settings"]]
    if "guidance_scales" in evaluation:
        command += ["--guidance-scales", *map(str, evaluation["guidance_scales"])]
    return command


def evaluate(name, kinds, data_flags):
    """Scores the exported model; keeps each report, row by row, beside the card.

    The report beside the card is rewritten after every row, so that an
    interrupted evaluation keeps its rows in the committed files and the same
    command resumes it (in another checkout too, via `ddpm-evaluate`'s resume).
    """
    from ddpm_keras.cli import evaluate_main

    for kind in kinds:
        output_dir = os.path.join(run_dir(name), f"evaluation-{kind}")
        command = evaluate_command(name, kind)
        released = read_json(evaluation_path(name, kind))
        if released is not None and not os.path.exists(os.path.join(output_dir, "evaluation.json")):
            os.makedirs(output_dir, exist_ok=True)
            write_json(os.path.join(output_dir, "evaluation.json"), released)

        def keep(report, command=command, kind=kind):
            write_json(evaluation_path(name, kind), report | {"command": shlex.join(command)})

        code = evaluate_main(
            [*command[1:], *data_flags, "--output-dir", output_dir], report_callback=keep
        )
        if code:
            return code
    return 0


def quality_table(report):
    """The card's table of one evaluation report: one line per row, numbers as recorded."""
    conditional = any(row.get("guidance_scale") is not None for row in report["rows"])
    header = ["samples", "N", "FID", "KID x 1000", "class mix: largest deviation"]
    header += ["class agreement"] if conditional else []
    header += ["sampling + scoring time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in _by_scale_within_setting(report["rows"]):
        deviation = row.get("class_mix_deviation")
        cells = [
            row_label(row),
            f"{row['num_samples']:,}",
            f"{row['fid']:.2f}",
            f"{1000 * row['kid']:.2f} ± {1000 * row['kid_std']:.2f}",
            "-" if deviation is None else f"{100 * deviation:.1f} pp",
        ]
        if conditional:
            agreement = row.get("agreement")
            cells.append("-" if agreement is None else f"{100 * agreement:.1f}%")
        cells.append(f"{row['seconds'] / 60:.1f} min")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_scale_within_setting(rows):
    """The rows in their order, except that each setting's rows go by guidance scale."""

    def setting(row):
        return (row.get("sampler"), row.get("steps"), row.get("eta"))

    first_seen = {}
    for row in rows:
        first_seen.setdefault(setting(row), len(first_seen))
    return sorted(rows, key=lambda row: (first_seen[setting(row)], row.get("guidance_scale") or 0))


def _hours(seconds):
    return f"{seconds / 3600:.2f} h"


def model_section(name, record, reports, unwritten=()):
    """The card's section on one released model; `unwritten`: its reports not yet written."""
    config, history = record["config"], record["history"]
    invocations = record["invocations"]
    commits = sorted({i["commit"] for i in invocations})
    cpus = sorted({i["cpu"] for i in invocations})
    epochs = history[-1]["epoch"] if history else 0
    export = record.get("export", {})
    lines = [
        f"## `{name}`",
        "",
        "Trained with:",
        "",
        "```bash",
        record["command"],
        "```",
        "",
        f"- Data: `{config['dataset']}` (TFDS), its train split"
        + (", with the labels (classifier-free guidance)" if config["class_conditional"] else ""),
        f"- Commit: {', '.join(commits)}",
        f"- CPU: {'; '.join(cpus)}",
        f"- Training: {epochs} epochs, {_hours(sum(e['time_s'] for e in history))} of epochs, "
        f"{_hours(sum(i.get('seconds', 0) for i in invocations))} of wall time in "
        f"{len(invocations)} invocation{'s' if len(invocations) > 1 else ''}"
        + (" (interrupted and resumed)" if len(invocations) > 1 else ""),
        f"- Final losses: train {history[-1]['loss']:.4f}, validation {history[-1]['val_loss']:.4f}"
        if history
        else "- Final losses: none recorded",
        f"- Parameters: {export.get('parameters', 0):,}; the file (EMA weights only) "
        f"{export.get('file_bytes', 0) / 1e6:.1f} MB",
    ]
    if not reports:
        lines += [
            "",
            f"Quality: not measured yet (`python scripts/release.py evaluate --name {name}`).",
        ]
    elif unwritten:
        lines += [
            "",
            f"Not measured yet: the {', '.join(unwritten)} report "
            f"(`python scripts/release.py evaluate --name {name} --only {' '.join(unwritten)}`).",
        ]
    for report in reports.values():
        lines += [
            "",
            f"Quality ({report['extractor']} features against the {report['reference_examples']:,}"
            f" images of `{report['reference']}`, seed {report['seed']}):",
            "",
            "```bash",
            report["command"] + " --manual-dir DIR",
            "```",
            "",
            quality_table(report),
        ]
        timed_on = sorted({row["cpu"] for row in report["rows"] if "cpu" in row})
        if timed_on:
            lines += ["", f"Times measured on: {'; '.join(timed_on)}."]
        if not report.get("complete", True):
            missing = report["rows_planned"] - len(report["rows"])
            lines += [
                "",
                f"{missing} more row{'s' if missing > 1 else ''} of this command still to be "
                f"measured (`python scripts/release.py evaluate --name {name}` resumes).",
            ]
    if len({row["num_samples"] for report in reports.values() for row in report["rows"]}) > 1:
        lines += [
            "",
            "FID is biased upward at small N, so FIDs at different N do not compare: read each "
            "against the floor at its own N. KID is unbiased and compares across N "
            "(Binkowski et al. 2018).",
        ]
    return "\n".join(lines)


def render_card(names=None):
    """MODEL_CARD.md's text, from the run records and the reports beside the card."""
    sections = [
        "# Released models",
        "",
        "Rendered by `python scripts/release.py card` from the `*.release.json` records and "
        "`*.evaluation.json` reports in this folder; do not edit by hand.",
    ]
    for name in names or RELEASES:
        record = read_json(release_record_path(name))
        if record is None:
            continue
        reports = {}
        for kind in RELEASES[name]["evaluations"]:
            report = read_json(evaluation_path(name, kind))
            if report is not None:
                reports[kind] = report
        unwritten = [kind for kind in RELEASES[name]["evaluations"] if kind not in reports]
        sections += ["", model_section(name, record, reports, unwritten)]
    return "\n".join(sections) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("train", "export", "evaluate", "card"))
    parser.add_argument("--name", choices=sorted(RELEASES))
    parser.add_argument("--manual-dir", help="folder of the Fashion-MNIST .gz files (offline)")
    parser.add_argument("--only", nargs="+", help="evaluate: only these reports (main, ...)")
    args = parser.parse_args(argv)
    if args.step != "card" and args.name is None:
        parser.error(f"{args.step} needs --name")
    data_flags = [] if args.manual_dir is None else ["--manual-dir", args.manual_dir]
    if args.step == "train":
        return train(args.name, data_flags)
    if args.step == "export":
        return export(args.name)
    if args.step == "evaluate":
        kinds = args.only or list(RELEASES[args.name]["evaluations"])
        return evaluate(args.name, kinds, data_flags)
    write_text(MODEL_CARD, render_card())
    print(f"Wrote {MODEL_CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
