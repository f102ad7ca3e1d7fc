"""Snakemake adapter: instance labels from one method's predicted boundaries on the test split."""

import dataclasses

from cellresdm.logs import step_logging
from cellresdm.segment import SegmentSettings, segment_predictions

with step_logging(snakemake.log[0]) as log:
    settings = SegmentSettings.from_config(dict(snakemake.params.settings))
    # the rule's threads (Snakemake scales them to the cores it has) decide how many fields run at once
    settings = dataclasses.replace(settings, workers=max(int(snakemake.threads), 1))
    segment_predictions(snakemake.input.predictions, snakemake.output.instances, settings, log=log)
