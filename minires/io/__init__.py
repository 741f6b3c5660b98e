"""Reading weights: Keras HDF5 files (keras_h5)."""
