"""The steps of a run, in order: the data (``prepared_data``), the teachers (``load_teachers``, ``teacher_specs``),
the method (``method``), the transfer batches with the teacher's outputs (``transfer_batches``), the fit (``fit``,
``resume``), the write (``write``, ``evaluation``)."""
