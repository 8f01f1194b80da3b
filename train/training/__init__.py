"""Training: the shared loop, run folders, distributed setup, the stages (autoencoder, inverse dynamics, world model),
recipes and weight merging. Imports train.games, train.data and train.pictures.
"""
