"""Episode data: the episode file format, recording, importing video with an input log, labelling actions with an
inverse-dynamics model, and the windows training and eval draw. Imports train.games only.
"""
