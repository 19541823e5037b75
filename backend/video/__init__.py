"""Video input: a phone video walked around the subject becomes a folder of
chosen frames in the workspace (the `frames` stage), which the rest of the
job reads as photos."""
