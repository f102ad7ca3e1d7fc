"""Snakemake adapter: well profiles and their retrieval mAP for every source (cellresdm.profiles.profile_stage).

Named inputs: ``features`` (in the order of ``params.sources``), ``platemaps`` (in the order of ``params.plates``).
"""

from cellresdm.logs import step_logging
from cellresdm.profiles import ProfileOutputs, ProfileSettings, profile_stage

with step_logging(snakemake.log[0]) as log:
    out = snakemake.output
    profile_stage(
        dict(zip(snakemake.params.sources, snakemake.input.features, strict=True)),
        dict(zip(snakemake.params.plates, snakemake.input.platemaps, strict=True)),
        ProfileSettings.from_config(dict(snakemake.params.settings)),
        ProfileOutputs(
            wells=out.wells,
            profiles=out.profiles,
            selection=out.selection,
            replicate=out.replicate,
            annotation=out.annotation,
            crossmodal=out.crossmodal,
            summary=out.summary,
            figure=out.figure,
        ),
        log=log,
    )
