"""``cellresdm <step> ...``: every pipeline step without Snakemake.

Steps read the same config file as the Snakefile (``--config``, default: all defaults = the demo) and write
the same files, so one plate can be redone or debugged by hand.
"""

from __future__ import annotations

import argparse
import sys

from cellresdm import config as cfg
from cellresdm import steps
from cellresdm.compare import compare_results
from cellresdm.errors import CellResDMError
from cellresdm.logs import step_logging
from cellresdm.quality_bars import quality_bars_markdown
from cellresdm.results import ResultsLayout, markdown_table
from cellresdm.shards import whole_plate
from cellresdm.stage_times import latest_snakemake_log, stage_times_markdown


def _plate(config: dict, plate_id: str) -> dict:
    for plate in config["plates"]:
        if plate["id"] == plate_id:
            return plate
    known = ", ".join(p["id"] for p in config["plates"])
    raise CellResDMError(f"plate {plate_id!r} is not in the config's plates ({known})")


def _run(args: argparse.Namespace) -> None:
    if args.step == "compare":
        _compare(args.old, args.new)
        return
    if args.step == "outputs":
        sys.stdout.write(markdown_table())
        return
    if args.step == "quality-bars":
        sys.stdout.write(quality_bars_markdown(args.results_folders))
        return
    if args.step == "stage-times":
        log = args.snakemake_log or latest_snakemake_log(".")
        sys.stdout.write(stage_times_markdown(ResultsLayout(args.results).benchmarks_dir(), log))
        return
    config = cfg.load_config(args.config)
    results = ResultsLayout(args.results)
    if args.step == "synth":
        plate = _plate(config, args.plate)
        steps.synth_plate(
            plate["id"],
            plate["cell_line"],
            config["demo"],
            results.demo_gallery(),
            results.demo_truth(plate["id"]),
            platemap=plate["split"] == "test",
            predict=plate["split"] == "predict",
        )
    elif args.step == "download":
        _plate(config, args.plate)
        gallery = dict(config["gallery"])
        if config["source"] == "demo":
            gallery.update(root=results.demo_gallery(), endpoint_url=None)
        steps.download(
            args.plate,
            gallery,
            results.raw_images(args.plate),
            results.load_data(args.plate),
            illum_dir=results.raw_illum(args.plate),
        )
    elif args.step == "filter":
        steps.filter_plate(
            args.plate,
            results.load_data(args.plate),
            results.fields(args.plate),
            results.platemap(args.plate),
            config["filter"],
            out_illumination=results.illumination_qc(args.plate),
        )
    elif args.step == "groundtruth":
        shard = whole_plate().name  # one job: the whole plate is one shard
        steps.groundtruth(
            args.plate,
            shard,
            results.fields(args.plate),
            results.load_data(args.plate),
            results.groundtruth_dir(args.plate),
            results.groundtruth_shard(args.plate, shard),
            config["groundtruth"],
            workers=args.workers,
        )
        steps.gather_groundtruth(
            args.plate,
            [results.groundtruth_shard(args.plate, shard)],
            results.fields(args.plate),
            results.groundtruth_index(args.plate),
        )
    elif args.step == "profiles":
        _run_profiles(args, config, results)
    elif args.step in ("train", "sample"):
        if args.method not in config["methods"]:
            raise CellResDMError(f"method {args.method!r} is not enabled in the config's methods {config['methods']}")
        _run_models(args, config, results)
    elif args.step == "export":
        _export(args, config, results)
    elif args.step == "ome-zarr":
        _ome_zarr(args, config, results)
    elif args.step == "train-vqgan":
        from cellresdm.methods.vqgan import train_vqgan

        steps.use_threads(config["train"]["threads"])
        train_vqgan(config, args.dataset or results.dataset("train"), args.out_dir or results.model_dir(steps.VQGAN))
    elif args.step == "dataset":
        plates = cfg.plates_in_split(config, args.split)
        if not plates:
            raise CellResDMError(f"no plate of the config has split {args.split!r}")
        steps.dataset(
            args.split,
            plates,
            [_plate(config, p)["cell_line"] for p in plates],
            [results.fields(p) for p in plates],
            [results.load_data(p) for p in plates],
            [results.groundtruth_dir(p) for p in plates],
            config["dataset"],
            config["groundtruth"]["boundary_thickness"],
            results.dataset(args.split),
            results.dataset_summary(args.split),
        )


def _run_profiles(args: argparse.Namespace, config: dict, results: ResultsLayout) -> None:
    """The profiles stage on the feature tables under ``results`` of ``args.sources`` (default: real, every
    method, bf_copy) and the test plates with a plate map (the demo's generated ones for a demo run)."""
    from cellresdm.profiles import ProfileOutputs, ProfileSettings, profile_stage

    sources = args.sources or ["real", *config["methods"], "bf_copy"]
    demo = config["source"] == "demo"
    platemaps = {
        p["id"]: p["platemap"] or (results.demo_platemap(p["id"]) if demo else None)
        for p in config["plates"]
        if p["split"] == "test"
    }
    platemaps = {plate: path for plate, path in platemaps.items() if path}
    if not platemaps:
        raise CellResDMError("no test plate of the config has a plate map (plates.N.platemap)")
    outputs = ProfileOutputs(
        wells=results.profiles_wells(),
        profiles=results.profiles(),
        selection=results.profiles_selection(),
        replicate=results.profiles_replicate(),
        annotation=results.profiles_annotation(),
        crossmodal=results.profiles_crossmodal(),
        summary=results.profiles_summary(),
        figure=results.profiles_figure(),
    )
    profile_stage(
        {s: results.features(s) for s in sources}, platemaps, ProfileSettings.from_config(config["profiles"]), outputs
    )


def _run_models(args: argparse.Namespace, config: dict, results: ResultsLayout) -> None:
    if args.step == "train":
        steps.use_threads(config["train"]["threads"])  # as the train rule, so both give the same weights
        steps.train_method(
            args.method,
            config,
            args.dataset or results.dataset("train"),
            args.out_dir or results.model_dir(args.method),
        )
    elif args.step == "sample":
        steps.use_threads(config["sample"]["threads"])
        steps.sample_method(
            args.method,
            results.model(args.method),
            results.dataset("test"),
            results.predictions(args.method),
            config["sample"],
            benchmark_out=results.sample_timing(args.method),
        )


def _export(args: argparse.Namespace, config: dict, results: ResultsLayout) -> None:
    """``cellresdm export METHOD [--out FILE]``: the method's self-contained model file (cellresdm.export)."""
    from cellresdm.export import export_model

    out = export_model(
        args.method,
        results.model(args.method),
        results.dataset("train"),
        args.out or results.model_export(args.method),
        config["groundtruth"]["pixel_size_um"],
    )
    print(out)


def _ome_zarr(args: argparse.Namespace, config: dict, results: ResultsLayout) -> None:
    """``cellresdm ome-zarr METHOD [--plate P ...]``: one OME-NGFF HCS plate per plate of the method's test
    predictions (cellresdm.omezarr)."""
    from cellresdm.export import dataset_pixel_size
    from cellresdm.omezarr import OmeZarrSettings, plate_names, write_hcs_plate
    from cellresdm.stores import open_dataset, store_exists

    predictions, dataset = results.predictions(args.method), results.dataset("test")
    plates = plate_names(predictions)
    instances = results.instances(args.method)
    if not store_exists(instances):
        raise CellResDMError(f"{instances}: instance store is missing (run the segment step of {args.method} first)")
    unknown = sorted(set(args.plate or ()) - set(plates))
    if unknown:
        raise CellResDMError(f"{predictions}: no predictions of plate(s) {', '.join(unknown)} (has {plates})")
    pixel_size = dataset_pixel_size(open_dataset(dataset, arrays=()).attrs, config["groundtruth"]["pixel_size_um"])
    settings = OmeZarrSettings.from_config(config["omezarr"], threads=args.threads)
    for plate in args.plate or plates:
        out = results.omezarr(args.method, plate)
        write_hcs_plate(out, plate, predictions, dataset, instances, pixel_size, settings)
        print(out)


def _compare(old: str, new: str) -> None:
    """Print every difference between two results folders; an error when there is one."""
    differences = compare_results(old, new)
    for difference in differences:
        print(difference)
    if differences:
        raise CellResDMError(f"{len(differences)} difference(s) between {old} and {new}")
    print(f"{old} and {new} agree: arrays bit-identical, tables equal (timings, logs and benchmarks left out)")


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
    train.add_argument("--dataset", help="default: the train split's dataset store under --results")
    train.add_argument("--out-dir", help="default: the method's model folder under --results")
    vqgan = sub.add_parser("train-vqgan", help="train the VQ-GAN of latent CellResDM (under torchrun: data parallel)")
    vqgan.add_argument("--dataset", help="default: the train split's dataset store under --results")
    vqgan.add_argument("--out-dir", help="default: the VQ-GAN's model folder under --results")
    sub.add_parser("sample", help="sample one trained method on the test split").add_argument("method")
    export = sub.add_parser("export", help="write a trained method's self-contained model file")
    export.add_argument("method")
    export.add_argument("--out", help="default: the method's exported model file under --results")
    omezarr = sub.add_parser("ome-zarr", help="OME-NGFF HCS plates of a method's test predictions")
    omezarr.add_argument("method")
    omezarr.add_argument("--plate", action="append", help="only this plate (repeatable; default: every plate)")
    omezarr.add_argument("--threads", type=int, default=1, help="threads writing the pyramids (default 1)")
    sub.add_parser("dataset", help="zarr dataset of one split").add_argument("split", choices=["train", "val", "test"])
    profiles = sub.add_parser("profiles", help="well profiles and retrieval mAP of the test plates' feature tables")
    profiles.add_argument("--sources", nargs="+", help="feature sources (default: real, every method, bf_copy)")
    compare = sub.add_parser("compare", help="compare two results folders (arrays bit-identical, tables equal)")
    compare.add_argument("old")
    compare.add_argument("new")
    sub.add_parser("outputs", help="print every output path of the pipeline, its stage, rule and writer")
    bars = sub.add_parser("quality-bars", help="the demo's quality bars per results folder and their spread over them")
    bars.add_argument("results_folders", nargs="+", metavar="RESULTS")
    times = sub.add_parser("stage-times", help="a run's job time per stage (Snakemake benchmarks) and its wall time")
    times.add_argument("--snakemake-log", help="default: the newest .snakemake/log/*.snakemake.log here")
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
