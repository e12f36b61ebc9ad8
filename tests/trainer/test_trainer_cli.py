"""The command line: documented options, clear data errors, and a whole run on a non-Fashion CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from trainer_helpers import write_csv

from trainer.cli import build_parser, main
from trainer.litert import LiteRTModel


def test_help_documents_every_option() -> None:
    parser = build_parser()
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert undocumented == []
    text = parser.format_help()
    for option in ("--data", "--train-csv", "--train-folder", "--download-base", "--epochs", "--out",
                   "--run", "--checkpoint-dir", "--no-flip-tta", "--no-quantize", "--limit"):
        assert option in text


def test_bad_data_is_reported_not_traced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,pixel1,pixel2\n0,1,2\n1,3\n")
    assert main(["--data", "csv", "--train-csv", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "2 columns, expected 3" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs --train-csv"):
        main(["--data", "csv"])


def _bars(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """16x16 images of three easy classes: a horizontal bar, a vertical bar, a square."""
    labels = rng.integers(0, 3, n)
    images = np.zeros((n, 16, 16), np.uint8)
    for img, lab in zip(images, labels, strict=True):
        a, b = rng.integers(2, 10, 2)
        if lab == 0:
            img[a:a + 3, 1:15] = 255
        elif lab == 1:
            img[1:15, b:b + 3] = 255
        else:
            img[a:a + 6, b:b + 6] = 255
    return images, labels


def test_csv_run_takes_size_and_classes_from_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_csv = write_csv(tmp_path / "train.csv", *_bars(900, rng))
    test_csv = write_csv(tmp_path / "test.csv", *_bars(300, rng))
    out = tmp_path / "model"
    argv = ["--data", "csv", "--train-csv", str(train_csv), "--test-csv", str(test_csv), "--widths", "4,8",
            "--epochs", "8", "--batch-size", "32", "--run", "bars", "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--out", str(out), "--log-every", "0"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_shape"] == [16, 16, 1]
    assert manifest["class_names"] == ["0", "1", "2"]
    assert manifest["metrics"]["evaluated_on"] == "test"
    # 8 epochs (not 3) so the model is confident: 3 left it at 60% with near-ties that the default
    # int8 export check (99% same class as Keras) refused about one run in three.
    assert manifest["metrics"]["test_accuracy"] > 0.9  # chance is 1/3; 8 epochs reach 100% here
    lite = LiteRTModel((out / "model.tflite").read_bytes())
    assert lite.predict(np.zeros((2, 16, 16, 1), np.float32)).shape == (2, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"].startswith("fashion-train --data csv")
    assert metrics["quantization"] == "int8" and metrics["calibration"]["source"].endswith("train.csv[train]")
    # The same command again, as float32, finds the finished run and only exports.
    assert main([*argv, "--no-quantize"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["history"] == metrics["history"]
    assert again["quantization"] == "none" and again["calibration"] is None
