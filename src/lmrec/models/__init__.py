"""Recommenders behind one contract (``base.Recommender``): baselines and the LM model.

``registry.MODELS`` maps each model's name to its class; ``registry.load_model`` reloads a
saved model of any registered type.
"""
