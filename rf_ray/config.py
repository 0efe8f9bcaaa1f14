"""Kept only so that experiment directories written before the re-lay still open.

A run spec stored in the legacy format (``runs/<id>/spec.cloudpickle``, see
``rf_ray.spec_store``) pickled its ``RunConfig`` by reference to this module. New code imports
from ``rf_ray.configs`` (what users write) and ``rf_ray.specs`` (``RunConfig``).
"""

from rf_ray.specs import RunConfig

__all__ = ["RunConfig"]
