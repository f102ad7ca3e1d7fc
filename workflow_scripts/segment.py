"""Snakemake adapter: instance labels from one method's predicted boundaries on one shard of the test split."""

from cellresdm.logs import step_logging
from cellresdm.segment import InstanceSettings
from cellresdm.segment_step import segment_predictions
from cellresdm.shards import store_shard_rows

with step_logging(snakemake.log[0]) as log:
    segment_predictions(
        snakemake.input.predictions,
        snakemake.output.instances,
        InstanceSettings.from_config(snakemake.params.settings),
        # the rule's threads (Snakemake scales them to the cores it has) decide how many fields run at once
        workers=max(int(snakemake.threads), 1),
        log=log,
        rows=store_shard_rows(snakemake.input.predictions, snakemake.wildcards.plate, snakemake.wildcards.shard),
    )
