"""Learners of the stack: one small protocol (``base.Learner``) and a registry keyed by kind.

Adding a learner is one new module here and one line in ``base.REGISTRY``; a gradient-boosted
one subclasses ``boosted.BoostedLearner`` (round control, early stopping, threads, summary)
and writes only its library calls.
"""
from pipeline.learners.base import REGISTRY, Learner, load_learner, make_learner

__all__ = ["REGISTRY", "Learner", "load_learner", "make_learner"]
