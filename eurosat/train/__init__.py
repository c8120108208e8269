"""The model and how it learns: the CNN, local training and evaluation loops, the LR schedule, safe loading."""
