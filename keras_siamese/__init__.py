"""keras-siamese: Siamese neural networks for one-shot image recognition (Koch et al., 2015) in Keras 3."""

# Importing these registers the project's serialisable layer and optimiser, so
# ``keras.models.load_model`` reads a saved ``.keras`` model with safe_mode on.
from keras_siamese import model, optimizers  # noqa: F401

__version__ = "0.1.0"
