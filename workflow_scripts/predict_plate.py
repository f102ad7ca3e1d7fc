"""Snakemake adapter: one predict plate painted by one method (cellresdm.predict.predict_plate)."""

from cellresdm.logs import step_logging
from cellresdm.predict import PredictOutputs, predict_plate
from cellresdm.steps import use_threads

with step_logging(snakemake.log[0]) as log:
    use_threads(snakemake.threads)
    out = snakemake.output
    predict_plate(
        snakemake.wildcards.method,
        snakemake.wildcards.plate,
        snakemake.params.cell_line,
        snakemake.input.model,
        snakemake.input.load_data,
        snakemake.input.fields,
        PredictOutputs(
            inputs=out.inputs,
            predictions=out.predictions,
            instances=out.instances,
            omezarr=out.omezarr,
            cells=out.cells,
            wells=out.wells,
            montage=out.montage,
            summary=out.summary,
        ),
        dict(snakemake.params.config),
        float(snakemake.params.pixel_size_um),
        platemap=snakemake.input.get("platemap"),
        workers=max(int(snakemake.threads), 1),
        log=log,
    )
