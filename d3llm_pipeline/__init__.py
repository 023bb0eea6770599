"""d3llm-pipeline: pseudo-trajectory distillation and parallel decoding for diffusion LLMs."""
