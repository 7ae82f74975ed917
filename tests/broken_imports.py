"""A user's module found on the path whose own import of a package fails: their code, not a misspelt name."""
import distillery_test_no_such_package  # noqa: F401


def make(**_options):
    raise AssertionError("unreachable")
