"""fashion-train: train the Fashion-MNIST CNN, evaluate it on held-out data and export its artifacts.

Data comes from the official IDX files (default: /usr/share/datasets/fashion-mnist, or downloaded and
verified with --data download), a Kaggle-style CSV (label,pixel1..pixelN) or a folder of images with
one subfolder per class. Image size and class count are read from the data. A validation split is
carved from the training data for early stopping and model selection; the test data is only used
once, for the exported metrics.

A run is resumable: it checkpoints after every epoch under --checkpoint-dir/--run, and running the
same command again continues where it stopped (or, when training had finished, only exports).

Examples:
  fashion-train --out models/fashion-cnn                         # the bundled model (about 70 min)
  fashion-train --no-quantize --out runs/f32                     # the same weights as a float32 file
  fashion-train --data download --run dl --out gs://bucket/models/fashion-cnn
  fashion-train --data csv --train-csv train.csv --test-csv test.csv --out runs/csv-model
  fashion-train --data folder --train-folder photos/ --image-size 28x28 --out runs/photos
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.config import AugmentConfig, TrainConfig, default_checkpoint_root
from trainer.data.dataset import DataError, Dataset, Split, stratified_split

DATA_SOURCES = ("official", "download", "idx", "csv", "folder")


def _size(text: str) -> tuple[int, int]:
    """``28x28`` or ``28`` -> (rows, cols)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, got {text!r}") from exc
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 4:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS with sides >= 4, got {text!r}")
    return parts[0], parts[1]


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError("widths must be positive")
    return widths


def build_parser() -> argparse.ArgumentParser:
    """Every option, with its default shown in --help."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="fashion-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", choices=DATA_SOURCES, default="official",
                      help="where training data comes from (default: %(default)s): official = IDX files in "
                           "--idx-dir; download = fetch the official files into --cache-dir; idx = the four "
                           "--*-images/--*-labels files; csv = --train-csv/--test-csv; folder = "
                           "--train-folder/--test-folder")
    data.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist",
                      help="folder with the four official .gz files (default: %(default)s)")
    data.add_argument("--train-images", help="IDX training images (with --data idx)")
    data.add_argument("--train-labels", help="IDX training labels (with --data idx)")
    data.add_argument("--test-images", help="IDX test images (with --data idx; optional)")
    data.add_argument("--test-labels", help="IDX test labels (with --data idx; optional)")
    data.add_argument("--download-base", action="append", metavar="URL",
                      help="URL prefix to download the official files from; repeat for mirrors, tried in "
                           "order (default: the zalando GitHub raw files, then the dataset's S3 website)")
    data.add_argument("--cache-dir", help="download cache (default: ~/.cache/fashion-pipeline/datasets/"
                                          "fashion-mnist)")
    data.add_argument("--train-csv", help="Kaggle-style CSV for training (with --data csv); .csv or .csv.gz")
    data.add_argument("--test-csv", help="Kaggle-style CSV for the final evaluation (optional)")
    data.add_argument("--image-shape", type=_size, metavar="ROWSxCOLS",
                      help="CSV image shape when the pixel count is not a square")
    data.add_argument("--train-folder", help="folder of class subfolders of PNG/JPEG images (with --data folder)")
    data.add_argument("--test-folder", help="the same layout, for the final evaluation (optional)")
    data.add_argument("--image-size", type=_size, metavar="ROWSxCOLS",
                      help="resize folder images to this size (default: their common size when it is at "
                           "most 128 px, else 28x28)")
    data.add_argument("--limit", type=int, default=0,
                      help="train on only the first N training images (quick experiments; default: all)")

    model = p.add_argument_group("model and training")
    model.add_argument("--widths", type=_widths, default=",".join(map(str, d.widths)), metavar="W1,W2,...",
                       help="channels of each stage (default: %(default)s)")
    model.add_argument("--blocks-per-stage", type=int, default=d.blocks_per_stage,
                       help="residual blocks per stage (default: %(default)s)")
    model.add_argument("--dropout", type=float, default=d.dropout,
                       help="dropout before the classifier (default: %(default)s)")
    model.add_argument("--no-flip-tta", dest="flip_tta", action="store_false",
                       help="do not average each image with its mirror image in the exported graph "
                            "(halves inference FLOPs, costs about 0.25%% accuracy)")
    model.add_argument("--no-quantize", dest="quantize", action="store_false",
                       help="export a float32 model.tflite instead of the default int8 one (int8: weights and "
                            "activations calibrated on training images, about 3.5x faster, same accuracy)")
    model.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    model.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (default: %(default)s)")
    model.add_argument("--max-lr", type=float, default=d.max_lr,
                       help="peak learning rate of the one-cycle schedule (default: %(default)s)")
    model.add_argument("--weight-decay", type=float, default=d.weight_decay,
                       help="AdamW decoupled weight decay on kernels (default: %(default)s)")
    model.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                       help="label smoothing (default: %(default)s)")
    model.add_argument("--val-fraction", type=float, default=d.val_fraction,
                       help="share of training data held out for validation (default: %(default).4f)")
    model.add_argument("--patience", type=int, default=d.patience,
                       help="stop after this many epochs without a better validation accuracy, counted "
                            "from --min-epochs at the earliest (default: %(default)s)")
    model.add_argument("--min-epochs", type=int, default=d.min_epochs,
                       help="epoch from which patience starts counting (default: %(default)s)")
    model.add_argument("--no-augment", action="store_true",
                       help="train without flips, shifts and random erasing")
    model.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")

    run = p.add_argument_group("run and export")
    run.add_argument("--run", default="bundled",
                     help="run name: checkpoints go to --checkpoint-dir/RUN (default: %(default)s)")
    run.add_argument("--checkpoint-dir", default=str(default_checkpoint_root()),
                     help="where runs keep their checkpoints, outside git (default: %(default)s)")
    run.add_argument("--out", help="export destination: a folder or a gs://bucket/prefix "
                                   "(default: runs/RUN)")
    run.add_argument("--model-name", default="fashion-cnn", help="model name in the manifest "
                                                                  "(default: %(default)s)")
    run.add_argument("--log-every", type=int, default=100,
                     help="print progress every N training steps, 0 for once per epoch (default: %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the options describe."""
    return TrainConfig(
        widths=tuple(args.widths), blocks_per_stage=args.blocks_per_stage, dropout=args.dropout,
        epochs=args.epochs, batch_size=args.batch_size, max_lr=args.max_lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, val_fraction=args.val_fraction, patience=args.patience,
        min_epochs=args.min_epochs, seed=args.seed, flip_tta=args.flip_tta, quantize=args.quantize,
        augment=AugmentConfig(flip=False, max_shift=0, erase_prob=0.0) if args.no_augment else AugmentConfig(),
    )


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
    if missing:
        raise SystemExit(f"fashion-train: --data {args.data} needs {', '.join(missing)}")


def load_data(args: argparse.Namespace) -> tuple[Dataset, Dataset | None]:
    """(training data, test data or None) for the chosen source."""
    if args.data == "official":
        from trainer.data.idx import load_official

        return load_official(args.idx_dir, "train"), load_official(args.idx_dir, "test")
    if args.data == "download":
        from trainer.data.download import DEFAULT_BASE_URLS, download_official

        bases = args.download_base or DEFAULT_BASE_URLS
        return (download_official("train", args.cache_dir, bases),
                download_official("test", args.cache_dir, bases))
    if args.data == "idx":
        from trainer.data.idx import load_idx_pair

        _require(args, "train_images", "train_labels")
        test = load_idx_pair(args.test_images, args.test_labels) if args.test_images and args.test_labels else None
        return load_idx_pair(args.train_images, args.train_labels), test
    if args.data == "csv":
        from trainer.data.csv import load_csv

        _require(args, "train_csv")
        train = load_csv(args.train_csv, args.image_shape)
        test = load_csv(args.test_csv, args.image_shape, train.class_names) if args.test_csv else None
        return train, test
    from trainer.data.folder import load_image_folder

    _require(args, "train_folder")
    train = load_image_folder(args.train_folder, args.image_size)
    test = load_image_folder(args.test_folder, train.image_shape) if args.test_folder else None
    return train, test


def make_split(train: Dataset, test: Dataset | None, cfg: TrainConfig, limit: int = 0) -> Split:
    """Carve the validation split from the (optionally limited) training data; check test matches."""
    if limit:
        train = train.subset(np.arange(min(limit, len(train))), f"[:{limit}]")
    if test is not None and (test.image_shape != train.image_shape or test.class_names != train.class_names):
        raise DataError(f"test data ({test.image_shape}, {len(test.class_names)} classes) does not match "
                        f"training data ({train.image_shape}, {len(train.class_names)} classes)")
    tr, va = stratified_split(train, cfg.val_fraction, cfg.seed)
    return Split(tr, va, test)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fashion-train`` and ``python -m trainer``."""
    args = build_parser().parse_args(argv)
    # Keep TensorFlow's C++ start-up chatter out of the progress log (warnings and errors still show).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    cfg = config_from_args(args)
    try:
        train_data, test_data = load_data(args)
        split = make_split(train_data, test_data, cfg, args.limit)
    except DataError as exc:
        print(f"fashion-train: {exc}", file=sys.stderr)
        return 2

    from trainer.export import ExportError, export_model
    from trainer.train import train

    result = train(split.train, split.val, cfg, Path(args.checkpoint_dir) / args.run, log_every=args.log_every)
    eval_data, evaluated_on = (split.test, "test") if split.test is not None else (split.val, "validation")
    if evaluated_on == "validation":
        print("fashion-train: no test data given; the exported metrics are on the validation split, "
              "which also chose the best epoch, so they are optimistic", file=sys.stderr)
    command = "fashion-train " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        # Calibration images come from the training split only, never from the data the metrics are on.
        info = export_model(result, cfg, eval_data, args.out or f"runs/{args.run}", calibration=split.train,
                            evaluated_on=evaluated_on, model_name=args.model_name,
                            extra_metrics={"command": command})
    except ExportError as exc:
        print(f"fashion-train: export failed, nothing was written: {exc}", file=sys.stderr)
        return 1
    summary = {"accuracy_on": evaluated_on, **info.manifest["metrics"], "version": info.manifest["version"],
               "files": info.uris}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
