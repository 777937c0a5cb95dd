"""The nano model family: its training (train.py: autoencoders, text tower, data; chain.py: the whole chain and
`movie nano-train`) and, in the stage folders beside this file, its shipped weights (see movie_core.weights)."""
