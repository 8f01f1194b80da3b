"""Agents in the dream: the world model as a Gymnasium environment (dream_env.DreamEnv, one world) and as a vector
environment (dream_vec_env.DreamVecEnv, B worlds as one session batch), each with a reward hook. Imports the rooms
below it."""
