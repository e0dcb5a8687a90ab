import numpy

WEIGHTS = numpy.full((200, 200), 0.5)


def predict():
    return float((WEIGHTS @ WEIGHTS).sum())
