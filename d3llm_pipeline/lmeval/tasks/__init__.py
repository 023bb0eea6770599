"""lm-eval task configs of d3llm_pipeline (TaskManager(include_path=this dir)); each task is a subdir."""
