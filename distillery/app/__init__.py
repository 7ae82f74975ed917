"""The application layer: a run's steps, read in order, and the workflows built on them.

config (``config``, ``config_file``) -> build the data (``data``), teachers (``teachers``; ``teacher_specs`` for
teachers trained elsewhere), method (``method``) and the transfer batches with the teacher's outputs
(``transfer``) -> fit (``fit``) -> write the run directory (``write``, ``evaluation``, ``resume``);
``pipeline`` runs these steps for one image or table config. Text runs take the same steps in
``language_pipeline``, with their data from ``language_data`` (token blocks) or ``text_classes`` (labelled texts)
and what differs between next-token prediction and classification in ``language_tasks``; ``generate`` continues
a prompt with a finished language model. Born-again generations (``born_again``), ``tune``, ``demo`` and the
in-memory Python API (``api``, ``self_distillation``) are clients of these steps; ``run`` chooses between a single
run, a text run and born-again generations. See docs/architecture.md.
"""
