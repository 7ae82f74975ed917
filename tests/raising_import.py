"""A user's module that raises while it is imported (at its top level): the CLI must name it in one line."""
raise ValueError("this module reads MODEL_ROOT, which is not set")


def make(**_options):  # never reached: the import fails first
    raise AssertionError("unreachable")
