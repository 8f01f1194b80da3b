"""The games Reverie learns from: the built-in game, Atari/Doom/Gymnasium adapters, the agents that play them, and
their object probes (what a player looks at, used by training weights and by eval alike).
"""
