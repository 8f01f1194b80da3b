"""Agents in the dream: the world model as a Gymnasium environment. Imports the rooms below it."""
