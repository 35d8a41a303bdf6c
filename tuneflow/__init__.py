"""tuneflow: reproducible LLM fine-tuning (PT -> SFT -> DPO) driven by Snakemake."""

__version__ = "0.1.0"
# The variant of the settings without overrides (results/ rather than results/variants/<name>/).
DEFAULT_VARIANT = "default"
