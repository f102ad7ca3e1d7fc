"""Snakemake adapter: the paper's figures and tables and report.html (cellresdm.report.write_report).

Named inputs (lists in the order of their ``params``): ``dataset``, ``quality``, ``quality_ttests``,
``predictions`` / ``sample_benchmarks`` / ``models`` (``params.methods``), ``instances`` (``params.sources``),
``groundtruth`` / ``fields`` / ``illumination`` (``params.plates``), optional ``segmentation_summary``,
``segmentation_ttests``, ``fig6``, ``fig7``, ``qc_summary``, ``table2``, ``profiles_summary``, ``profiles_figure``.
``params.train_benchmarks`` maps each method to its Snakemake training benchmark (not a rule input: benchmarks are
written after a job's outputs). ``params.config`` holds the config keys the report reads. Named outputs are the
report's files; ``segmentation_figures`` holds Figs. 6 and 7 (or nothing), ``profiles`` the profiles figure and
summary (or nothing).
"""

from cellresdm.logs import step_logging
from cellresdm.report import ReportInputs, ReportOutputs, write_report


def _named(files, name: str) -> str | None:
    # a Snakemake file list with named entries: `in` would test the paths, keys() has the names
    return str(files[name]) if name in files.keys() else None  # noqa: SIM118


def _by(keys: list[str], name: str) -> dict[str, str]:
    if name not in snakemake.input.keys():  # noqa: SIM118
        return {}
    files = snakemake.input[name]
    files = [files] if isinstance(files, str) else [str(f) for f in files]
    return dict(zip(keys, files, strict=True))


with step_logging(snakemake.log[0]):
    methods = list(snakemake.params.methods)
    plates = list(snakemake.params.plates)
    sources = list(snakemake.params.sources)
    optional = (
        "segmentation_summary",
        "segmentation_ttests",
        "fig6",
        "fig7",
        "qc_summary",
        "table2",
        "profiles_summary",
        "profiles_figure",
    )
    inputs = ReportInputs(
        dataset=_named(snakemake.input, "dataset"),
        quality=_named(snakemake.input, "quality"),
        quality_ttests=_named(snakemake.input, "quality_ttests"),
        predictions=_by(methods, "predictions"),
        sample_benchmarks=_by(methods, "sample_benchmarks"),
        models=_by(methods, "models"),
        instances=_by(sources, "instances"),
        groundtruth_indexes=_by(plates, "groundtruth"),
        fields=_by(plates, "fields"),
        illumination=_by(plates, "illumination"),
        predict_montages=_by(list(snakemake.params.predict_montages), "predict_montages"),
        train_benchmarks=dict(snakemake.params.train_benchmarks),
        **{name: _named(snakemake.input, name) for name in optional},
    )
    names = ("html", "fig4", "fig5", "table2", "table3", "throughput", "methods", "filtering")
    outputs = ReportOutputs(
        **{name: _named(snakemake.output, name) for name in names},
        # [fig6, fig7] when the run has segmentation sources, else nothing
        **dict(zip(("fig6", "fig7"), map(str, snakemake.output.get("segmentation_figures", [])), strict=False)),
        # [profiles figure, profiles summary] when the run has profiles, else nothing
        **dict(zip(("profiles", "profiles_summary"), map(str, snakemake.output.get("profiles", [])), strict=False)),
    )
    write_report(inputs, outputs, config=dict(snakemake.params.config))
