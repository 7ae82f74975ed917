"""Teachers: loading and freezing."""
from distillery.teachers.frozen import freeze
from distillery.teachers.loading import load_teacher

__all__ = ["freeze", "load_teacher"]
