"""Learners of the stack: one small protocol (``base.Learner``) and a registry keyed by kind.

Adding a learner is one new module here and one line in ``base.REGISTRY``.
"""
from pipeline.learners.base import REGISTRY, Learner, load_learner, make_learner

__all__ = ["REGISTRY", "Learner", "load_learner", "make_learner"]
