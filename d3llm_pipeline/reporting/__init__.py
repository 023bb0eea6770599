"""Reporting: AUP (accuracy under parallelism) and, later, sweep aggregation, tables and plots."""
