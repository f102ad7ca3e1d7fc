"""The paper's figures and tables and one self-contained HTML report, from the run's own outputs (docs/design.md
section 5, stage ``report``).

- :mod:`~cellresdm.report.figures`: Fig. 4 (:func:`fig4_examples`) and Fig. 5 (:func:`fig5_quality`, with the
  paired t-test markers of :func:`significance_markers`).
- :mod:`~cellresdm.report.tables`: throughput (:func:`throughput_table`), Table 3 (:func:`table3_latent`),
  methods (:func:`methods_status`) and field filtering (:func:`filtering_summary`).
- :mod:`~cellresdm.report.page`: the HTML page.
- :mod:`~cellresdm.report.paths`: what the report reads (:class:`ReportInputs`) and writes
  (:class:`ReportOutputs`), and which inputs each output needs.
- :mod:`~cellresdm.report.writer`: :func:`write_report`, the stage itself.
"""

from cellresdm.report.figures import (
    FIG5_METRICS,
    REFERENCE_BETTER,
    REFERENCE_WORSE,
    display_ranges,
    fig4_examples,
    fig5_quality,
    median_index,
    significance_markers,
)
from cellresdm.report.paths import ReportInputs, ReportOutputs, lacking_inputs
from cellresdm.report.tables import (
    filtering_summary,
    methods_status,
    table3_latent,
    throughput_table,
)
from cellresdm.report.writer import write_report

__all__ = [
    "FIG5_METRICS",
    "REFERENCE_BETTER",
    "REFERENCE_WORSE",
    "ReportInputs",
    "ReportOutputs",
    "display_ranges",
    "fig4_examples",
    "fig5_quality",
    "filtering_summary",
    "lacking_inputs",
    "median_index",
    "methods_status",
    "significance_markers",
    "table3_latent",
    "throughput_table",
    "write_report",
]
