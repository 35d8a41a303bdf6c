"""tuneflow: reproducible LLM fine-tuning (PT -> SFT -> DPO) driven by Snakemake."""

__version__ = "0.1.0"
