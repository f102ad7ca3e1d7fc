"""Every path the pipeline writes, relative to one results folder: the layout of ``results/``.

This module is the one place that spells an output path. The Snakemake rules (``rules/common.smk``), the
``cellresdm`` CLI, the report and the tests take paths from :class:`ResultsLayout`; library functions receive
explicit paths. :data:`OUTPUTS` lists every output with the stage and rule that write it, the function that
does the writing and what the file holds; ``docs/design.md`` section 5 is generated from it
(``python -m cellresdm.results``) and a test keeps the two equal.

Wildcards are plain strings, so ``ResultsLayout().fields("{plate}")`` is the Snakemake pattern
``results/fields/{plate}.parquet`` and ``ResultsLayout().fields("BR00116991")`` one plate's file.
"""

from __future__ import annotations

import posixpath
import string
import sys
from dataclasses import dataclass

#: The results folder of a run (relative to the Snakemake working directory).
DEFAULT_ROOT = "results"


@dataclass(frozen=True)
class Output:
    """One output of the pipeline.

    Attributes:
        name: the :class:`ResultsLayout` method that returns its path.
        template: path relative to the results folder, with ``{wildcard}`` fields.
        stage: pipeline stage (docs/design.md section 1).
        rule: the Snakemake rule that writes it.
        writer: the ``cellresdm`` function that writes it.
        content: what it holds.
    """

    name: str
    template: str
    stage: str
    rule: str
    writer: str
    content: str

    @property
    def wildcards(self) -> tuple[str, ...]:
        return tuple(field for _, field, _, _ in string.Formatter().parse(self.template) if field)


#: Every output, in pipeline order.
OUTPUTS: tuple[Output, ...] = (
    Output(
        "resolved_config",
        "config.resolved.yaml",
        "every run",
        "(onstart)",
        "cellresdm.config.write_resolved_config",
        "the run's config as validated, every default filled in; its header names the config files used",
    ),
    Output(
        "demo_gallery",
        "demo_gallery",
        "synthetic gallery",
        "synth_plate",
        "cellresdm.synth.write_plate",
        "bucket root of the generated gallery in the exact cpg0000 key layout (demo only)",
    ),
    Output(
        "demo_truth",
        "demo_truth/{plate}",
        "synthetic gallery",
        "synth_plate",
        "cellresdm.synth.write_plate",
        "the generator's true labels, `{field}_labels.tiff` (2 x H x W uint16: nuclei, cells)",
    ),
    Output(
        "demo_wells",
        "demo_truth/{plate}/wells.csv",
        "synthetic gallery",
        "synth_plate",
        "cellresdm.synth.write_plate",
        "per-well generator settings: well, nucleus_scale, mito_scale, black_if",
    ),
    Output(
        "demo_platemap",
        "demo_platemaps/{plate}.csv",
        "synthetic gallery",
        "demo_platemap",
        "cellresdm.synth.write_platemap",
        "plate map of a demo test plate: well_position, broad_sample (empty: negative control), target (demo only)",
    ),
    Output(
        "raw_images",
        "raw/{plate}/images",
        "download",
        "download",
        "cellresdm.download.download_plate",
        "the plate's image files under their gallery names, checked against the bucket listing",
    ),
    Output(
        "raw_illum",
        "raw/{plate}/illum",
        "download",
        "download",
        "cellresdm.download.download_plate",
        "the plate's illumination functions `{plate}_Illum{channel}.npy` (H x W float, divide), when the gallery "
        "has all 8 and `gallery.illumination` is on",
    ),
    Output(
        "load_data",
        "raw/{plate}/load_data.parquet",
        "download",
        "download",
        "cellresdm.download.download_plate",
        "one row per field: Metadata_* columns, `path_{channel}` (local path) of the 8 channels and "
        "`illum_{channel}` (local path of its illumination function; None on every row of an uncorrected plate)",
    ),
    Output(
        "fields",
        "fields/{plate}.parquet",
        "filter",
        "filter_fields",
        "cellresdm.filters.filter_fields",
        "every field with `keep` and `reason` (missing, unreadable, edge_well, black_if)",
    ),
    Output(
        "platemap",
        "fields/{plate}_platemap.png",
        "filter",
        "filter_fields",
        "cellresdm.filters.plot_plate_map",
        "plate map of kept and dropped fields, coloured by reason",
    ),
    Output(
        "illumination_qc",
        "fields/{plate}_illumination.csv",
        "filter",
        "filter_fields",
        "cellresdm.illumination.falloff_qc",
        "illumination fall-off per channel: mean intensity of the field corners over the centre, pooled over kept "
        "fields, raw and illumination-corrected",
    ),
    Output(
        "groundtruth_dir",
        "groundtruth/{plate}",
        "ground truth",
        "groundtruth",
        "cellresdm.groundtruth.run_cellprofiler",
        "`{field}_labels.tiff` per kept field: 2 x H x W uint16 nuclei and cell labels (CellProfiler 4.2.8.1)",
    ),
    Output(
        "groundtruth_shard",
        "groundtruth/{plate}/shards/{shard}.parquet",
        "ground truth",
        "groundtruth_shard",
        "cellresdm.groundtruth.run_cellprofiler",
        "index of one shard's fields (a block of wells, cellresdm.shards); their labels go to `groundtruth/{plate}`",
    ),
    Output(
        "groundtruth_index",
        "groundtruth/{plate}/index.parquet",
        "ground truth",
        "groundtruth",
        "cellresdm.groundtruth.gather_index",
        "one row per labelled field: label file, object counts, CellProfiler seconds (written last)",
    ),
    Output(
        "groundtruth_qc",
        "groundtruth/qc/{plate}.parquet",
        "ground truth",
        "groundtruth_qc",
        "cellresdm.groundtruth.qc_against_truth",
        "CellProfiler labels vs the generator's true labels per field (stardist.matching; demo only)",
    ),
    Output(
        "groundtruth_qc_summary",
        "groundtruth/qc_summary.csv",
        "ground truth",
        "groundtruth_qc_summary",
        "cellresdm.steps.groundtruth_qc_summary",
        "pooled QC per plate and object with the configured minimum F1 and a `passed` flag (demo only)",
    ),
    Output(
        "dataset",
        "datasets/{split}.zarr",
        "dataset",
        "dataset",
        "cellresdm.dataset.build_dataset",
        "`bf` (N,3,H,W), `if` (N,5,H,W), `boundaries` (N,2,H,W), `labels` (N,2,H,W), `fields.parquet`, "
        "`norm.parquet` (cellresdm.stores)",
    ),
    Output(
        "dataset_summary",
        "datasets/{split}_summary.json",
        "dataset",
        "dataset",
        "cellresdm.steps.dataset",
        "split, plates, field count, shapes, normalisation and build time",
    ),
    Output(
        "model_dir",
        "models/{method}",
        "train",
        "train",
        "cellresdm.train.Trainer",
        "`checkpoint.pt` (resumable state) while training; `launch_config.json` under torchrun",
    ),
    Output(
        "model",
        "models/{method}/model.pt",
        "train",
        "train",
        "cellresdm.train.Trainer",
        "config, raw and EMA weights of the trained method",
    ),
    Output(
        "model_export",
        "models/{method}/{method}.cellresdm.pt",
        "train",
        "export_model (predict plates); cellresdm export",
        "cellresdm.predict.export_with_reference",
        "the self-contained model file: EMA weights, method config, input planes, output channels, pixel size, "
        "normalisation with the training plates' percentiles, package version (cellresdm.export), the predict "
        "plates' QC reference (training BF statistics, the model's uncertainty)",
    ),
    Output(
        "train_log",
        "models/{method}/train_log.csv",
        "train",
        "train",
        "cellresdm.train.Trainer",
        "per logged step: step, epoch, loss, lr, grad_norm, seconds, samples_per_s",
    ),
    Output(
        "stardist_model",
        "models/{baseline}",
        "StarDist baselines",
        "stardist_bf, stardist_if",
        "cellresdm.stardist_baseline.train_stardist",
        "StarDist2D model folder (weights, config, thresholds optimised on val)",
    ),
    Output(
        "predictions",
        "predictions/{method}/test.zarr",
        "sample",
        "sample",
        "cellresdm.sample.gather_predictions",
        "`if` (N,5,H,W), `boundaries` probabilities and `boundaries_binary` (N,2,H,W), `*_std` with several "
        "samples, `fields.parquet` (cellresdm.stores)",
    ),
    Output(
        "predictions_shard",
        "predictions/{method}/shards/{plate}/{shard}.zarr",
        "sample",
        "sample_shard",
        "cellresdm.sample.predict_dataset",
        "predictions of one shard's test fields, its timing in the attrs (temporary: removed once gathered)",
    ),
    Output(
        "sample_timing",
        "benchmarks/sample_{method}.json",
        "sample",
        "sample",
        "cellresdm.sample.gather_predictions",
        "seconds per image, images per second, image size, steps, device, batch",
    ),
    Output(
        "omezarr",
        "omezarr/{method}/{plate}.ome.zarr",
        "sample",
        "omezarr",
        "cellresdm.omezarr.write_hcs_plate",
        "OME-NGFF HCS plate of the method's test predictions of one plate (ome-zarr-py): uint16 DNA, RNA, ER, AGP, "
        "Mito in real counts, optional BF and *_std channels, 3-level pyramid, nuclei and cells labels "
        "(`omezarr.enabled`)",
    ),
    Output(
        "predict_inputs",
        "predict/{method}/{plate}/inputs.zarr",
        "predict",
        "predict_plate",
        "cellresdm.predict.build_inputs",
        "a predict plate's kept fields as the model takes them: `bf` (N,3,H,W) in [0,1], field and norm tables "
        "(its BF percentiles, the training plates' IF percentiles)",
    ),
    Output(
        "predict_predictions",
        "predict/{method}/{plate}/predictions.zarr",
        "predict",
        "predict_plate",
        "cellresdm.sample.predict_dataset",
        "the virtual channels of a predict plate: mean of `predict.n_samples` samples and per-pixel `*_std`",
    ),
    Output(
        "predict_instances",
        "predict/{method}/{plate}/instances.zarr",
        "predict",
        "predict_plate",
        "cellresdm.segment_step.segment_predictions",
        "nuclei and cells (N,H,W) int32 from the predicted boundary channels",
    ),
    Output(
        "predict_omezarr",
        "predict/{method}/{plate}.ome.zarr",
        "predict",
        "predict_plate",
        "cellresdm.omezarr.write_hcs_plate",
        "OME-NGFF HCS plate of a predict plate: uint16 virtual channels in the training plates' counts, BF inputs, "
        "*_std uncertainty, pyramid, nuclei and cells labels",
    ),
    Output(
        "predict_cells",
        "predict/{method}/{plate}/cells.parquet",
        "predict",
        "predict_plate",
        "cellresdm.predict.per_cell_features",
        "one row per cell: Metadata_*, CellProfiler-named Cells/Nuclei/Cytoplasm features of the virtual "
        "channels, Cells_Uncertainty_{channel}",
    ),
    Output(
        "predict_wells",
        "predict/{method}/{plate}/wells.csv",
        "predict",
        "predict_plate",
        "cellresdm.predict.well_table",
        "per well: sites, cells, plate-map columns, BF statistics and uncertainty with robust z against the "
        "training plates, `ood` flag and reason, median per-cell profile",
    ),
    Output(
        "predict_montage",
        "predict/{method}/{plate}/montage.png",
        "predict",
        "predict_plate",
        "cellresdm.predict.plot_montage",
        "BF input, virtual channels, uncertainty and mask outlines of a few fields (shown in the report)",
    ),
    Output(
        "predict_summary",
        "predict/{method}/{plate}/summary.json",
        "predict",
        "predict_plate",
        "cellresdm.predict.predict_plate",
        "fields, cells, OOD wells, seconds per step and fields per second end to end",
    ),
    Output(
        "image_quality",
        "metrics/image_quality.parquet",
        "evaluate",
        "image_quality",
        "cellresdm.metrics.image_quality",
        "MSE, PSNR, SSIM (0-255) and Pearson r per image, channel and method, and the trivial BF copy",
    ),
    Output(
        "image_quality_summary",
        "metrics/image_quality_summary.csv",
        "evaluate",
        "image_quality",
        "cellresdm.metrics.summarise_quality",
        "mean per method and channel, and whether each method beats the BF copy",
    ),
    Output(
        "image_quality_ttests",
        "metrics/image_quality_ttests.csv",
        "evaluate",
        "image_quality",
        "cellresdm.metrics.quality_ttests",
        "paired t-tests of the reference method against every other source",
    ),
    Output(
        "instances",
        "segmentation/{source}_instances.zarr",
        "segmentation",
        "segment, stardist_predict",
        "cellresdm.segment_step.gather_instances",
        "`nuclei` (and `cells`) (N,H,W) int32 instance labels, `fields.parquet` (cellresdm.stores); StarDist "
        "baselines: cellresdm.stardist_baseline.predict_stardist",
    ),
    Output(
        "instances_shard",
        "segmentation/shards/{method}/{plate}/{shard}.zarr",
        "segmentation",
        "segment_shard",
        "cellresdm.segment_step.segment_predictions",
        "instances of one shard's test fields (temporary: removed once gathered)",
    ),
    Output(
        "segmentation_scores",
        "segmentation/{source}.parquet",
        "segmentation",
        "segmentation_scores",
        "cellresdm.segscores.score_source",
        "stardist.matching scores per image and pooled, nuclei and cells, IoU 0.1-0.9",
    ),
    Output(
        "segmentation_summary",
        "segmentation/segmentation_summary.csv",
        "segmentation",
        "segmentation_scores",
        "cellresdm.segscores.summary_table",
        "pooled scores per source and object at the t-test IoU",
    ),
    Output(
        "segmentation_ttests",
        "segmentation/segmentation_ttests.csv",
        "segmentation",
        "segmentation_scores",
        "cellresdm.segscores.paired_ttests",
        "paired t-tests of the reference against every other source",
    ),
    Output(
        "fig6",
        "segmentation/fig6_segmentation.png",
        "segmentation",
        "segmentation_scores",
        "cellresdm.segscores.plot_tau_curves",
        "Fig. 6: F1 and mean true score against IoU, reference vs pix2pix",
    ),
    Output(
        "fig6_data",
        "segmentation/fig6_segmentation.csv",
        "segmentation",
        "segmentation_scores",
        "cellresdm.segscores.figure_data",
        "the numbers plotted in Fig. 6",
    ),
    Output(
        "fig7",
        "segmentation/fig7_stardist.png",
        "segmentation",
        "segmentation_scores",
        "cellresdm.segscores.plot_tau_curves",
        "Fig. 7: nuclei of the reference vs StarDist on BF and on the real DNA channel",
    ),
    Output(
        "fig7_data",
        "segmentation/fig7_stardist.csv",
        "segmentation",
        "segmentation_scores",
        "cellresdm.segscores.figure_data",
        "the numbers plotted in Fig. 7",
    ),
    Output(
        "features",
        "features/{source}.parquet",
        "features",
        "features",
        "cellresdm.features.gather_features",
        "CellProfiler's measurements under its names (`fast` backend by default), median per image, pycytominer "
        "column names (`source`: real, a method or bf_copy)",
    ),
    Output(
        "features_shard",
        "features/shards/{source}/{plate}/{shard}.parquet",
        "features",
        "features_shard",
        "cellresdm.features.extract_features",
        "per-image features of one shard's test fields",
    ),
    Output(
        "table2",
        "features/table2_features.csv",
        "features",
        "feature_correlation",
        "cellresdm.features.write_table2",
        "Table 2: Pearson r of per-image features, real vs each method, per feature category",
    ),
    Output(
        "table2_markdown",
        "features/table2.md",
        "features",
        "feature_correlation",
        "cellresdm.features.write_table2",
        "Table 2 as Markdown",
    ),
    Output(
        "bf_copy_images",
        "predictions/bf_copy/test.zarr",
        "profiles",
        "bf_copy_images",
        "cellresdm.metrics.write_bf_copy",
        "the trivial BF copy as a prediction store: `if` (N,5,H,W) = the normalised in-focus BF plane in every IF "
        "channel (features source `bf_copy`)",
    ),
    Output(
        "profiles_wells",
        "profiles/wells.parquet",
        "profiles",
        "profiles",
        "cellresdm.profiles.profile_stage",
        "well profiles of every source (real, methods, bf_copy): median of the per-image features per well "
        "(pycytominer.aggregate), annotated with the plate map (`Metadata_Treatment`, `Metadata_Control`, ...)",
    ),
    Output(
        "profiles",
        "profiles/profiles.parquet",
        "profiles",
        "profiles",
        "cellresdm.profiles.profile_stage",
        "the same normalised per plate to the negative controls and reduced to the features selected on real",
    ),
    Output(
        "profiles_selection",
        "profiles/feature_selection.csv",
        "profiles",
        "profiles",
        "cellresdm.profiles.fit_feature_selection",
        "feature selection fitted on the real profiles: feature, kept, dropped_by (pycytominer operation)",
    ),
    Output(
        "profiles_replicate",
        "profiles/replicate_map.csv",
        "profiles",
        "profiles",
        "cellresdm.profiles.replicate_retrieval",
        "replicate retrieval vs controls per source, plate and treatment: mAP, random mAP, p-value, corrected "
        "p-value, retrieved (copairs)",
    ),
    Output(
        "profiles_annotation",
        "profiles/annotation_map.csv",
        "profiles",
        "profiles",
        "cellresdm.profiles.annotation_retrieval",
        "retrieval of treatments with the same mechanism/target per source, plate and annotation (copairs)",
    ),
    Output(
        "profiles_crossmodal",
        "profiles/crossmodal_map.csv",
        "profiles",
        "profiles",
        "cellresdm.profiles.crossmodal_retrieval",
        "cross-modal retrieval per source, plate and well: a virtual well profile ranking the real wells (copairs)",
    ),
    Output(
        "profiles_summary",
        "profiles/profiles_summary.csv",
        "profiles",
        "profiles",
        "cellresdm.profiles.summarise",
        "per source: replicate, annotation and cross-modal mAP, random mAP and fraction retrieved",
    ),
    Output(
        "profiles_figure",
        "profiles/profiles_map.png",
        "profiles",
        "profiles",
        "cellresdm.profiles.plot_retrieval",
        "mAP per source and test, with the fraction retrieved",
    ),
    Output(
        "report_html",
        "reports/report.html",
        "report",
        "paper_report",
        "cellresdm.report.write_report",
        "self-contained paper report: every figure and table below with captions",
    ),
    Output(
        "report_fig4",
        "reports/fig4_examples.png",
        "report",
        "paper_report",
        "cellresdm.report.fig4_examples",
        "Fig. 4: one test field, real and every method's channels and boundaries",
    ),
    Output(
        "report_fig5",
        "reports/fig5_quality.png",
        "report",
        "paper_report",
        "cellresdm.report.fig5_quality",
        "Fig. 5: MSE, PSNR, SSIM per channel and method with paired t-test markers",
    ),
    Output(
        "report_fig6",
        "reports/fig6_segmentation.png",
        "report",
        "paper_report",
        "cellresdm.report.write_report",
        "copy of Fig. 6",
    ),
    Output(
        "report_fig7",
        "reports/fig7_stardist.png",
        "report",
        "paper_report",
        "cellresdm.report.write_report",
        "copy of Fig. 7",
    ),
    Output(
        "report_table2",
        "reports/table2_features.csv",
        "report",
        "paper_report",
        "cellresdm.report.write_report",
        "copy of Table 2",
    ),
    Output(
        "report_profiles",
        "reports/profiles_map.png",
        "report",
        "paper_report",
        "cellresdm.report.write_report",
        "copy of the profiles figure (mAP per source)",
    ),
    Output(
        "report_profiles_summary",
        "reports/profiles_summary.csv",
        "report",
        "paper_report",
        "cellresdm.report.write_report",
        "copy of the profiles summary",
    ),
    Output(
        "report_table3",
        "reports/table3_latent.csv",
        "report",
        "paper_report",
        "cellresdm.report.table3_latent",
        "Table 3: pixel vs latent CellResDM, MSE and sampling seconds per image",
    ),
    Output(
        "report_throughput",
        "reports/throughput.csv",
        "report",
        "paper_report",
        "cellresdm.report.throughput_table",
        "seconds per image of every timed step and source, device and precision",
    ),
    Output(
        "report_methods",
        "reports/methods.csv",
        "report",
        "paper_report",
        "cellresdm.report.methods_status",
        "enabled, trained and sampled per method; perceptual loss on or off",
    ),
    Output(
        "report_filtering",
        "reports/filtering.csv",
        "report",
        "paper_report",
        "cellresdm.report.filtering_summary",
        "fields per plate: total, kept, dropped per reason",
    ),
    Output(
        "snakemake_report",
        "reports/snakemake_report.html",
        "report",
        "(snakemake --report)",
        "snakemake",
        "Snakemake's report of the same items, with plate maps and QC",
    ),
    Output(
        "log",
        "logs/{stage}/{name}.log",
        "every rule",
        "every rule",
        "cellresdm.logs.step_logging",
        "the rule's log",
    ),
    Output(
        "benchmark",
        "benchmarks/{stage}/{name}.tsv",
        "every rule that does work",
        "every rule",
        "snakemake (benchmark:)",
        "wall seconds, memory and I/O of the job",
    ),
)

_BY_NAME: dict[str, Output] = {output.name: output for output in OUTPUTS}


@dataclass(frozen=True)
class ResultsLayout:
    """Paths of every output under ``root`` (see :data:`OUTPUTS`); all methods return POSIX path strings."""

    root: str = DEFAULT_ROOT

    def path(self, output: str, /, **wildcards: str) -> str:
        """The path of the output named ``output`` (:data:`OUTPUTS`) with its wildcards filled.

        Raises:
            KeyError: ``output`` is not an output, or a wildcard is missing.
        """
        return posixpath.join(self.root, _BY_NAME[output].template.format(**wildcards))

    def resolved_config(self) -> str:
        return self.path("resolved_config")

    # synthetic gallery (demo)
    def demo_gallery(self) -> str:
        return self.path("demo_gallery")

    def demo_truth(self, plate: str) -> str:
        return self.path("demo_truth", plate=plate)

    def demo_wells(self, plate: str) -> str:
        return self.path("demo_wells", plate=plate)

    def demo_platemap(self, plate: str) -> str:
        return self.path("demo_platemap", plate=plate)

    # download, filter, ground truth
    def raw_images(self, plate: str) -> str:
        return self.path("raw_images", plate=plate)

    def raw_illum(self, plate: str) -> str:
        return self.path("raw_illum", plate=plate)

    def load_data(self, plate: str) -> str:
        return self.path("load_data", plate=plate)

    def fields(self, plate: str) -> str:
        return self.path("fields", plate=plate)

    def platemap(self, plate: str) -> str:
        return self.path("platemap", plate=plate)

    def illumination_qc(self, plate: str) -> str:
        return self.path("illumination_qc", plate=plate)

    def groundtruth_dir(self, plate: str) -> str:
        return self.path("groundtruth_dir", plate=plate)

    def groundtruth_shard(self, plate: str, shard: str) -> str:
        return self.path("groundtruth_shard", plate=plate, shard=shard)

    def groundtruth_index(self, plate: str) -> str:
        return self.path("groundtruth_index", plate=plate)

    def groundtruth_qc(self, plate: str) -> str:
        return self.path("groundtruth_qc", plate=plate)

    def groundtruth_qc_summary(self) -> str:
        return self.path("groundtruth_qc_summary")

    # datasets, models, predictions
    def dataset(self, split: str) -> str:
        return self.path("dataset", split=split)

    def dataset_summary(self, split: str) -> str:
        return self.path("dataset_summary", split=split)

    def model_dir(self, method: str) -> str:
        return self.path("model_dir", method=method)

    def model(self, method: str) -> str:
        return self.path("model", method=method)

    def model_export(self, method: str) -> str:
        return self.path("model_export", method=method)

    def train_log(self, method: str) -> str:
        return self.path("train_log", method=method)

    def stardist_model(self, baseline: str) -> str:
        return self.path("stardist_model", baseline=baseline)

    def predictions(self, method: str) -> str:
        return self.path("predictions", method=method)

    def predictions_shard(self, method: str, plate: str, shard: str) -> str:
        return self.path("predictions_shard", method=method, plate=plate, shard=shard)

    def sample_timing(self, method: str) -> str:
        return self.path("sample_timing", method=method)

    def omezarr(self, method: str, plate: str) -> str:
        return self.path("omezarr", method=method, plate=plate)

    # predict plates
    def predict_inputs(self, method: str, plate: str) -> str:
        return self.path("predict_inputs", method=method, plate=plate)

    def predict_predictions(self, method: str, plate: str) -> str:
        return self.path("predict_predictions", method=method, plate=plate)

    def predict_instances(self, method: str, plate: str) -> str:
        return self.path("predict_instances", method=method, plate=plate)

    def predict_omezarr(self, method: str, plate: str) -> str:
        return self.path("predict_omezarr", method=method, plate=plate)

    def predict_cells(self, method: str, plate: str) -> str:
        return self.path("predict_cells", method=method, plate=plate)

    def predict_wells(self, method: str, plate: str) -> str:
        return self.path("predict_wells", method=method, plate=plate)

    def predict_montage(self, method: str, plate: str) -> str:
        return self.path("predict_montage", method=method, plate=plate)

    def predict_summary(self, method: str, plate: str) -> str:
        return self.path("predict_summary", method=method, plate=plate)

    # evaluation
    def image_quality(self) -> str:
        return self.path("image_quality")

    def image_quality_summary(self) -> str:
        return self.path("image_quality_summary")

    def image_quality_ttests(self) -> str:
        return self.path("image_quality_ttests")

    def instances(self, source: str) -> str:
        return self.path("instances", source=source)

    def instances_shard(self, method: str, plate: str, shard: str) -> str:
        return self.path("instances_shard", method=method, plate=plate, shard=shard)

    def segmentation_scores(self, source: str) -> str:
        return self.path("segmentation_scores", source=source)

    def segmentation_summary(self) -> str:
        return self.path("segmentation_summary")

    def segmentation_ttests(self) -> str:
        return self.path("segmentation_ttests")

    def fig6(self) -> str:
        return self.path("fig6")

    def fig6_data(self) -> str:
        return self.path("fig6_data")

    def fig7(self) -> str:
        return self.path("fig7")

    def fig7_data(self) -> str:
        return self.path("fig7_data")

    def features(self, source: str) -> str:
        return self.path("features", source=source)

    def features_shard(self, source: str, plate: str, shard: str) -> str:
        return self.path("features_shard", source=source, plate=plate, shard=shard)

    def table2(self) -> str:
        return self.path("table2")

    def table2_markdown(self) -> str:
        return self.path("table2_markdown")

    # profiles
    def bf_copy_images(self) -> str:
        return self.path("bf_copy_images")

    def profiles_wells(self) -> str:
        return self.path("profiles_wells")

    def profiles(self) -> str:
        return self.path("profiles")

    def profiles_selection(self) -> str:
        return self.path("profiles_selection")

    def profiles_replicate(self) -> str:
        return self.path("profiles_replicate")

    def profiles_annotation(self) -> str:
        return self.path("profiles_annotation")

    def profiles_crossmodal(self) -> str:
        return self.path("profiles_crossmodal")

    def profiles_summary(self) -> str:
        return self.path("profiles_summary")

    def profiles_figure(self) -> str:
        return self.path("profiles_figure")

    # report
    def report(self, item: str) -> str:
        """A file of ``reports/``: ``html``, ``fig4`` ... ``filtering`` (the ``report_*`` outputs)."""
        return self.path(f"report_{item}")

    def snakemake_report(self) -> str:
        return self.path("snakemake_report")

    # logs and benchmarks of every rule
    def log(self, stage: str, name: str) -> str:
        return self.path("log", stage=stage, name=name)

    def benchmark(self, stage: str, name: str) -> str:
        return self.path("benchmark", stage=stage, name=name)

    def benchmarks_dir(self) -> str:
        """The folder holding every stage's benchmark folder (``cellresdm stage-times`` reads it)."""
        return posixpath.dirname(posixpath.dirname(self.benchmark("stage", "name")))


#: File name of the validated config that the torchrun workers of a multi-GPU training read, in the model folder.
LAUNCH_CONFIG_NAME = "launch_config.json"


def field_labels_name(field: str) -> str:
    """File name of one field's label image (2 x H x W uint16: nuclei, cells) in a ground-truth or truth folder."""
    return f"{field}_labels.tiff"


#: The report items of :meth:`ResultsLayout.report`, in :data:`OUTPUTS` order.
REPORT_ITEMS: tuple[str, ...] = tuple(o.name.removeprefix("report_") for o in OUTPUTS if o.name.startswith("report_"))


#: Stages whose outputs do not depend on training (a rerun with another ``train.seed`` reuses them).
DATA_STAGES: tuple[str, ...] = ("synthetic gallery", "download", "filter", "ground truth", "dataset")


def data_stage_folders() -> list[str]:
    """Top-level folders of the :data:`DATA_STAGES` outputs, in pipeline order (scripts/demo_seeds.sh copies them)."""
    folders: list[str] = []
    for output in OUTPUTS:
        folder = output.template.split("/")[0]
        if output.stage in DATA_STAGES and folder not in folders:
            folders.append(folder)
    return folders


def markdown_table() -> str:
    """The outputs table of docs/design.md section 5 (paths under ``results/``)."""
    lines = ["| stage | rule | output | content | written by |", "|---|---|---|---|---|"]
    for output in OUTPUTS:
        content = output.content.replace("|", "\\|")
        lines.append(f"| {output.stage} | {output.rule} | `{output.template}` | {content} | `{output.writer}` |")
    return "\n".join(lines) + "\n"


#: Markers around the generated table in docs/design.md.
DESIGN_BEGIN, DESIGN_END = "<!-- outputs:begin -->\n", "<!-- outputs:end -->"


def update_design_page(path: str) -> None:
    """Rewrite the outputs table between :data:`DESIGN_BEGIN` and :data:`DESIGN_END` of the page at ``path``."""
    with open(path, encoding="utf-8") as handle:
        page = handle.read()
    head, rest = page.split(DESIGN_BEGIN, 1)
    tail = rest.split(DESIGN_END, 1)[1]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(head + DESIGN_BEGIN + markdown_table() + DESIGN_END + tail)


def main(argv: list[str]) -> None:
    """``python -m cellresdm.results``: the outputs table; ``... --update-design PAGE``: rewrite it in the design
    page; ``... NAME [WILDCARD=VALUE ...]``: one output's path."""
    if not argv:
        sys.stdout.write(markdown_table())
        return
    if argv[0] == "--update-design":
        update_design_page(argv[1])
        return
    wildcards = dict(arg.split("=", 1) for arg in argv[1:])
    print(ResultsLayout().path(argv[0], **wildcards))


if __name__ == "__main__":
    main(sys.argv[1:])
