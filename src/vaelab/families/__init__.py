"""Model families beyond the plain VAE of model.py, each one module."""
