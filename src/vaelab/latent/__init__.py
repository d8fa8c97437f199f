"""Latent-variable building blocks: the diagonal-Gaussian posterior, priors and flows.

Below the models (model.py, families/) and above nothing of vaelab but errors: a module
here knows distributions over z, never networks of images, training or run directories.
"""
