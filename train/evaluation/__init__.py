"""Evaluation: what a player would see in a long dream beside the real game (objects, control, drift), and the judges
that score it. Imports the rooms below it: games, data, training, pictures.
"""
