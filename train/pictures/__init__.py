"""Pictures shared by every room: image grids, line plots, GIFs and the side-by-side video. Imports engine/ only."""
