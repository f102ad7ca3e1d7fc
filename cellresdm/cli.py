"""``cellresdm <step> ...``: every pipeline step without Snakemake.

Steps read the same config file as the Snakefile (``--config``, default: all defaults = the demo) and write
the same files, so one plate can be redone or debugged by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellresdm import config as cfg
from cellresdm import steps
from cellresdm.errors import CellResDMError
from cellresdm.logs import step_logging


def _plate(config: dict, plate_id: str) -> dict:
    for plate in config["plates"]:
        if plate["id"] == plate_id:
            return plate
    known = ", ".join(p["id"] for p in config["plates"])
    raise CellResDMError(f"plate {plate_id!r} is not in the config's plates ({known})")


def _run(args: argparse.Namespace) -> None:
    config = cfg.load_config(args.config)
    results = Path(args.results)
    if args.step == "synth":
        plate = _plate(config, args.plate)
        steps.synth_plate(
            plate["id"],
            plate["cell_line"],
            config["demo"],
            str(results / "demo_gallery"),
            str(results / "demo_truth"),
        )
    elif args.step == "download":
        _plate(config, args.plate)
        gallery = dict(config["gallery"])
        if config["source"] == "demo":
            gallery.update(root=str(results / "demo_gallery"), endpoint_url=None)
        steps.download(args.plate, gallery, str(results / "raw" / args.plate))
    elif args.step == "filter":
        steps.filter_plate(
            args.plate,
            str(results / "raw" / args.plate / "load_data.parquet"),
            str(results / "fields" / f"{args.plate}.parquet"),
            str(results / "fields" / f"{args.plate}_platemap.png"),
            config["filter"],
        )
    elif args.step == "groundtruth":
        steps.groundtruth(
            args.plate,
            str(results / "fields" / f"{args.plate}.parquet"),
            str(results / "raw" / args.plate / "load_data.parquet"),
            str(results / "groundtruth" / args.plate),
            config["groundtruth"],
            workers=args.workers,
        )
    elif args.step in ("train", "sample"):
        if args.method not in config["methods"]:
            raise CellResDMError(f"method {args.method!r} is not enabled in the config's methods {config['methods']}")
        _run_models(args, config, results)
    elif args.step == "dataset":
        plates = cfg.plates_in_split(config, args.split)
        if not plates:
            raise CellResDMError(f"no plate of the config has split {args.split!r}")
        lines = [_plate(config, p)["cell_line"] for p in plates]
        steps.dataset(
            args.split,
            plates,
            lines,
            [str(results / "fields" / f"{p}.parquet") for p in plates],
            [str(results / "raw" / p / "load_data.parquet") for p in plates],
            str(results / "groundtruth"),
            config["dataset"],
            config["groundtruth"]["boundary_thickness"],
            str(results / "datasets" / f"{args.split}.zarr"),
            str(results / "datasets" / f"{args.split}_summary.json"),
        )


def _run_models(args: argparse.Namespace, config: dict, results: Path) -> None:
    if args.step == "train":
        steps.train_method(
            args.method,
            config,
            args.dataset or str(results / "datasets" / "train.zarr"),
            args.out_dir or str(results / "models" / args.method),
        )
    elif args.step == "sample":
        steps.sample_method(
            args.method,
            str(results / "models" / args.method / "model.pt"),
            str(results / "datasets" / "test.zarr"),
            str(results / "predictions" / args.method / "test.zarr"),
            str(results / "benchmarks" / f"sample_{args.method}.json"),
            config["sample"],
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellresdm", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config YAML (default: the built-in defaults, i.e. the demo)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--log", help="log file (default: stderr)")
    sub = parser.add_subparsers(dest="step", required=True)
    for name, text in [
        ("synth", "write one plate of the embedded synthetic gallery"),
        ("download", "fetch one plate's load_data and images"),
        ("filter", "filter table and plate map of one plate"),
    ]:
        sub.add_parser(name, help=text).add_argument("plate")
    gt = sub.add_parser("groundtruth", help="CellProfiler labels of one plate")
    gt.add_argument("plate")
    gt.add_argument("--workers", type=int, default=1)
    train = sub.add_parser("train", help="train one method (under torchrun: data parallel)")
    train.add_argument("method")
    train.add_argument("--dataset", help="default: RESULTS/datasets/train.zarr")
    train.add_argument("--out-dir", help="default: RESULTS/models/METHOD")
    sub.add_parser("sample", help="sample one trained method on the test split").add_argument("method")
    sub.add_parser("dataset", help="zarr dataset of one split").add_argument("split", choices=["train", "val", "test"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with step_logging(args.log):
            _run(args)
    except CellResDMError as exc:
        print(f"cellresdm {args.step}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
