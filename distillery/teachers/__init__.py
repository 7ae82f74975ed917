"""Teachers: loading and freezing."""
from distillery.teachers.frozen import freeze, left_as_found
from distillery.teachers.loading import load_teacher

__all__ = ["freeze", "left_as_found", "load_teacher"]
