"""The release steps' records and the model card rendered from them (no training here)."""

import importlib.util
import json
import os
import shlex

import pytest

from ddpm_keras import pretrained
from ddpm_keras.files import file_sha256

from .conftest import REPO_ROOT


def load_release():
    spec = importlib.util.spec_from_file_location("release", REPO_ROOT / "scripts" / "release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy_report(conditional=False):
    row = {"source": "model", "sampler": "ddim", "steps": 50, "eta": 0.0}
    row |= {"num_samples": 10_000, "fid": 3.14159, "kid": 0.00123, "kid_std": 0.00045}
    row |= {"class_mix_deviation": 0.0123, "seconds": 1500.0, "agreement": None}
    row |= {"cpu": "AMD EPYC (family 25, model 17), 2 cores"}
    real = {"source": "real", "sampler": None, "steps": None, "eta": None}
    real |= {"guidance_scale": None, "num_samples": 10_000, "fid": 0.2, "kid": 0.00001}
    real |= {"kid_std": 0.00002, "class_mix_deviation": 0.004, "seconds": 60.0, "agreement": None}
    rows = [real]
    for scale in (0.0, 3.0) if conditional else (None,):
        agreement = None if scale is None else (0.5 if scale == 0 else 0.9123)
        rows.append(row | {"guidance_scale": scale, "agreement": agreement})
    return {
        "extractor": "fmnist",
        "reference": "fashion_mnist test",
        "reference_examples": 10_000,
        "seed": 0,
        "command": "ddpm-evaluate --pretrained toy --num-samples 10000 --settings ddim:50",
        "rows": rows,
    }


def toy_record(invocations=1):
    return {
        "name": "toy",
        "command": "python scripts/train.py --preset release --output-dir runs/release/toy",
        "invocations": [{"commit": "abc123", "cpu": "AMD EPYC, 2 cores", "seconds": 3600.0}]
        * invocations,
        "config": {"dataset": "fashion_mnist", "class_conditional": False},
        "history": [
            {"epoch": 1, "loss": 0.05, "val_loss": 0.049, "time_s": 3000.0},
            {"epoch": 2, "loss": 0.04, "val_loss": 0.0412, "time_s": 3000.0},
        ],
        "export": {"parameters": 1_119_841, "file_bytes": 4_600_000},
    }


def test_the_quality_table_shows_each_row_as_recorded():
    release = load_release()
    table = release.quality_table(toy_report())
    lines = table.splitlines()
    assert "class agreement" not in lines[0]
    assert lines[2] == "| real images (floor) | 10,000 | 0.20 | 0.01 ± 0.02 | 0.4 pp | 1.0 min |"
    assert lines[3] == "| ddim 50 | 10,000 | 3.14 | 1.23 ± 0.45 | 1.2 pp | 25.0 min |"
    conditional = release.quality_table(toy_report(conditional=True)).splitlines()
    assert "class agreement" in conditional[0]
    assert conditional[3].startswith("| ddim 50, guidance 0 |")
    assert "| 91.2% |" in conditional[4] and "| - |" in conditional[2]


def test_the_quality_table_lists_a_settings_rows_by_guidance_scale():
    release = load_release()
    report = toy_report(conditional=True)
    floor, scale_0, scale_3 = report["rows"]
    ddim_25 = scale_0 | {"steps": 25}
    # Evaluated in the order the release runs them: the default scale before the sweep.
    report["rows"] = [floor, ddim_25, scale_0, scale_3, scale_3 | {"guidance_scale": 2.0}]
    labels = [line.split(" | ")[0] for line in release.quality_table(report).splitlines()[2:]]
    assert labels == [
        "| real images (floor)",
        "| ddim 25, guidance 0",
        "| ddim 50, guidance 0",
        "| ddim 50, guidance 2",
        "| ddim 50, guidance 3",
    ]


def toy_release(tmp_path, monkeypatch, kinds=("main",), invocations=1):
    """scripts/release.py with one model, `toy`, whose record (and reports) sit in tmp_path."""
    release = load_release()
    monkeypatch.setattr(release, "PRETRAINED_DIR", str(tmp_path))
    monkeypatch.setattr(release, "RELEASES", {"toy": {"evaluations": {k: {} for k in kinds}}})
    (tmp_path / "toy.release.json").write_text(json.dumps(toy_record(invocations)))
    return release


@pytest.mark.parametrize("invocations", [1, 2])
def test_the_card_is_rendered_from_the_records_beside_it(tmp_path, monkeypatch, invocations):
    release = toy_release(tmp_path, monkeypatch, invocations=invocations)
    (tmp_path / "toy.evaluation.json").write_text(json.dumps(toy_report()))
    card = release.render_card()
    assert "## `toy`" in card and toy_record()["command"] in card
    assert "- CPU: AMD EPYC, 2 cores" in card and "- Commit: abc123" in card
    assert "- Parameters: 1,119,841; the file (EMA weights only) 4.6 MB" in card
    assert f"{invocations * 1.0:.2f} h of wall time" in card and "1.67 h of epochs" in card
    assert ("resumed" in card) == (invocations > 1)
    assert "validation 0.0412" in card
    assert release.quality_table(toy_report()) in card
    # The floor row of toy_report has no cpu (a report from before rows named it).
    assert "Times measured on: AMD EPYC (family 25, model 17), 2 cores." in card
    assert toy_report()["command"] + " --manual-dir DIR" in card
    assert "still to be measured" not in card and "not measured yet" not in card


def test_the_card_says_how_many_rows_are_still_to_be_measured(tmp_path, monkeypatch):
    release = toy_release(tmp_path, monkeypatch)
    report = toy_report() | {"complete": False, "rows_planned": 5}
    (tmp_path / "toy.evaluation.json").write_text(json.dumps(report))
    card = release.render_card()
    assert release.quality_table(report) in card
    assert "3 more rows of this command still to be measured" in card
    assert "release.py evaluate --name toy` resumes" in card


def test_the_card_names_a_report_not_yet_written(tmp_path, monkeypatch):
    release = toy_release(tmp_path, monkeypatch, kinds=("main", "ancestral"))
    (tmp_path / "toy.evaluation.json").write_text(json.dumps(toy_report()))
    card = release.render_card()
    assert release.quality_table(toy_report()) in card
    assert "Not measured yet: the ancestral report (`python scripts/release.py evaluate" in card
    assert "--name toy --only ancestral`)" in card
    (tmp_path / "toy.ancestral.evaluation.json").write_text(json.dumps(toy_report()))
    assert "Not measured yet" not in release.render_card()


def test_the_card_warns_that_fids_at_different_n_do_not_compare(tmp_path, monkeypatch):
    release = toy_release(tmp_path, monkeypatch, kinds=("main", "ancestral"))
    (tmp_path / "toy.evaluation.json").write_text(json.dumps(toy_report()))
    ancestral = toy_report()
    ancestral["rows"] = [row | {"num_samples": 1_000} for row in ancestral["rows"]]
    (tmp_path / "toy.ancestral.evaluation.json").write_text(json.dumps(ancestral))
    warning = "FIDs at different N do not compare"
    assert warning in release.render_card()
    (tmp_path / "toy.ancestral.evaluation.json").write_text(json.dumps(toy_report()))
    assert warning not in release.render_card()


def test_the_card_of_a_model_not_yet_scored_says_so(tmp_path, monkeypatch):
    release = toy_release(tmp_path, monkeypatch)
    card = release.render_card()
    assert "## `toy`" in card and "Quality: not measured yet" in card and "| FID |" not in card


def test_evaluate_keeps_each_report_beside_the_card_and_resumes_from_it(tmp_path, monkeypatch):
    from ddpm_keras import cli

    release = load_release()
    monkeypatch.setattr(release, "PRETRAINED_DIR", str(tmp_path / "pretrained"))
    monkeypatch.chdir(tmp_path)  # runs/release/ goes here
    (tmp_path / "pretrained").mkdir()
    evaluations = {"main": {"num_samples": 10_000, "settings": ["ddim:50", "ddim:25"]}}
    monkeypatch.setattr(release, "RELEASES", {"toy": {"evaluations": evaluations}})
    # A report an earlier checkout committed: one of its two rows scored.
    committed = toy_report() | {"complete": False, "rows_planned": 2}
    committed["rows"] = committed["rows"][1:]
    release_path = tmp_path / "pretrained" / "toy.evaluation.json"
    release_path.write_text(json.dumps(committed))
    seen = {}

    def fake_evaluate_main(argv, report_callback):
        output_dir = argv[argv.index("--output-dir") + 1]
        with open(f"{output_dir}/evaluation.json", encoding="utf-8") as file:
            seen["resumed from"] = json.load(file)
        seen["argv"] = argv
        scored = seen["resumed from"]["rows"]
        report_callback({"rows": [*scored, scored[0] | {"steps": 25}], "complete": True})
        seen["after the row"] = json.loads(release_path.read_text())
        return 0

    monkeypatch.setattr(cli, "evaluate_main", fake_evaluate_main)
    assert release.evaluate("toy", ["main"], ["--manual-dir", "data"]) == 0
    assert seen["resumed from"] == committed
    assert seen["argv"][:2] == ["--pretrained", "toy"] and "--manual-dir" in seen["argv"]
    written = seen["after the row"]
    assert [row["steps"] for row in written["rows"]] == [50, 25]
    assert written["command"] == (
        "ddpm-evaluate --pretrained toy --num-samples 10000 --settings ddim:50 ddim:25"
    )


def test_the_committed_card_is_the_one_its_records_render():
    if not pretrained.PRETRAINED:
        pytest.skip("no released model yet")
    release = load_release()
    with open(pretrained.MODEL_CARD, encoding="utf-8") as file:
        assert file.read() == release.render_card()
    for name in pretrained.PRETRAINED:
        assert name in release.RELEASES
        for kind in release.RELEASES[name]["evaluations"]:
            path = release.evaluation_path(name, kind)
            if not os.path.exists(path):  # the card then says "not measured yet"
                continue
            with open(path, encoding="utf-8") as file:
                report = json.load(file)
            # The report scored the released file as it is now, with the
            # command the card names.
            assert report["model"] == f"pretrained:{name}"
            assert report["model_sha256"] == file_sha256(pretrained.pretrained_path(name))
            assert report["command"] == shlex.join(release.evaluate_command(name, kind))


def test_the_readme_quality_table_is_the_released_models_report():
    release = load_release()
    path = release.evaluation_path("fashion-mnist", "main")
    if "fashion-mnist" not in pretrained.PRETRAINED or not os.path.exists(path):
        pytest.skip("the released model is not scored yet")
    with open(path, encoding="utf-8") as file:
        report = json.load(file)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    # The front page shows the rows the committed report holds, as the card does.
    assert release.quality_table(report) in readme
    assert report["command"] in readme.replace(" \\\n    ", " ")
