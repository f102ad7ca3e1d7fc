"""Snakemake adapter: segmentation scores of every instance source, t-tests, summary and Figs. 6-7.

Inputs ``dataset`` (test.zarr) and ``instances`` (one store per source, in the order of ``params.sources``);
``params.settings`` is config ``segmentation`` (taus, ttest_tau), ``params.reference`` config ``reference``.
Everything is written beside ``output.summary``, under the names of :func:`cellresdm.segscores.output_paths`.
"""

from pathlib import Path

from cellresdm.errors import CellResDMError
from cellresdm.logs import step_logging
from cellresdm.segscores import write_scores

with step_logging(snakemake.log[0]):
    settings = snakemake.params.settings
    written = write_scores(
        snakemake.input.dataset,
        dict(zip(snakemake.params.sources, snakemake.input.instances, strict=True)),
        Path(snakemake.output.summary).parent,
        reference=snakemake.params.reference,
        taus=settings["taus"],
        ttest_tau=settings["ttest_tau"],
    )
    files = {str(p) for p in written["tables"].values()} | {str(v) for k, v in written.items() if k != "tables"}
    undeclared = [str(p) for p in snakemake.output if str(Path(p)) not in files]
    if undeclared:
        raise CellResDMError(f"segmentation rule declares outputs the step does not write: {', '.join(undeclared)}")
