"""The application layer, read in the order of a run: ``config`` (the YAML's schema and files) -> ``steps`` (data,
teachers, method, transfer batches, fit, write) -> ``tasks`` (one per kind of data: images and tables, next-token
prediction, text classification) -> ``skeleton`` (one run, the same for every task) -> ``workflows`` (the run entry,
born-again generations, tune, demo, generate and the in-memory Python API). See docs/architecture.md.
"""
