"""Images in: the embedded digit sets with fixed splits, folder and array readers with one-line errors, resumable minibatches."""
