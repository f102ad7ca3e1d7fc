"""Snakemake adapter: segmentation scores of every instance source, t-tests, summary and Figs. 6-7.

Inputs ``dataset`` (test.zarr) and ``instances`` (one store per source, in the order of ``params.sources``);
``params.settings`` is config ``segmentation_scores`` (taus, ttest_tau), ``params.reference`` config ``reference``.
Output ``tables`` lists one table per source, in the order of ``params.sources``.
"""

from cellresdm.logs import step_logging
from cellresdm.segscores import ScoreOutputs, write_scores

with step_logging(snakemake.log[0]):
    settings = snakemake.params.settings
    sources = list(snakemake.params.sources)
    output = snakemake.output
    write_scores(
        snakemake.input.dataset,
        dict(zip(sources, snakemake.input.instances, strict=True)),
        ScoreOutputs(
            tables=dict(zip(sources, output.tables, strict=True)),
            ttests=output.ttests,
            summary=output.summary,
            fig6=output.fig6,
            fig6_data=output.fig6_data,
            fig7=output.fig7,
            fig7_data=output.fig7_data,
        ),
        reference=snakemake.params.reference,
        taus=settings["taus"],
        ttest_tau=settings["ttest_tau"],
    )
