"""Load a run and draw images from it."""
