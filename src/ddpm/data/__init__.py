"""Images in: the embedded digit sets with fixed splits, one image and array reader with one-line errors, folders
and tables decoded once into a memory-mapped cache, resumable minibatches."""
