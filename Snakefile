# tuneflow: raw data -> convert -> tokenize -> PT -> merge -> SFT -> merge -> {DPO, RM -> RL, KTO}
#           -> merge -> evaluate -> summary table -> report.   `snakemake --profile local` runs it all;
# `snakemake --profile slurm results/merged/sft` submits every job to Slurm.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/report/index.html",
    default_target: True
