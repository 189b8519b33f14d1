"""Evaluation: full-ranking metrics (``metrics``) and the project's protocol (``protocol``).

No model training and no HTTP here: models are anything with a ``score(histories)`` method.
"""
