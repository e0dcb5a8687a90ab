"""What a data tool loads after numpy before the user's code: here, a
table of features computed once."""
import numpy

FEATURES = numpy.linspace(0.0, 1.0, 4_000_000).reshape(2000, 2000)
NORMALISED = (FEATURES - FEATURES.mean(axis=0)) / (FEATURES.std(axis=0) + 1e-9)
COVARIANCE = NORMALISED.T @ NORMALISED
