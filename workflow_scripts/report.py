"""Snakemake adapter: the paper's figures and tables and report.html (cellresdm.report.write_report).

Named inputs (lists in the order of their ``params``): ``dataset``, ``quality``, ``quality_ttests``,
``predictions`` / ``sample_benchmarks`` / ``models`` (``params.methods``), ``instances`` (``params.sources``),
``groundtruth`` / ``fields`` (``params.plates``), optional ``segmentation_summary``, ``segmentation_ttests``,
``fig6``, ``fig7``, ``qc_summary``, ``table2``. ``params.results`` is the results folder, where the report also
looks for the Snakemake training benchmarks (``benchmarks/train/{method}.tsv``, not rule inputs: benchmarks are
written after a job's outputs). ``params.config`` is the whole config. Everything goes beside ``output.html``.
"""

from pathlib import Path

from cellresdm.errors import CellResDMError
from cellresdm.logs import step_logging
from cellresdm.report import REPORT_FILES, ReportInputs, write_report


def _named(name: str) -> str | None:
    # snakemake.input is a list of paths with named entries: `in` would test the paths, keys() has the names
    return str(snakemake.input[name]) if name in snakemake.input.keys() else None  # noqa: SIM118


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
    # start from the conventional paths (optional items the rule does not list are looked for there) ...
    inputs = ReportInputs.from_results(snakemake.params.results, methods, plates, sources)
    # ... and take the rule's declared inputs where it has them
    for name in ("dataset", "quality", "quality_ttests", "segmentation_summary", "segmentation_ttests"):
        if _named(name) is not None:
            setattr(inputs, name, _named(name))
    for name in ("fig6", "fig7", "qc_summary", "table2"):
        if _named(name) is not None:
            setattr(inputs, name, _named(name))
    inputs.predictions.update(_by(methods, "predictions"))
    inputs.sample_benchmarks.update(_by(methods, "sample_benchmarks"))
    inputs.models.update(_by(methods, "models"))
    inputs.instances.update(_by(sources, "instances"))
    inputs.groundtruth_indexes.update(_by(plates, "groundtruth"))
    inputs.fields.update(_by(plates, "fields"))
    out_dir = Path(snakemake.output.html).parent
    result = write_report(inputs, out_dir, config=dict(snakemake.params.config))
    written = {str(p) for p in result["written"].values()}
    lacking = [str(p) for p in snakemake.output if str(Path(p)) not in written]
    if lacking:
        raise CellResDMError(
            f"report rule declares outputs the report could not write (inputs missing): {', '.join(lacking)}; "
            f"missing inputs: {'; '.join(f'{item} ({path})' for item, path in result['missing'])}; "
            f"files it writes: {', '.join(REPORT_FILES.values())}"
        )
