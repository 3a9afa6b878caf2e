"""The Keras registration package of the model's layers (their serialised names are `deeplab_trainer>Class`)."""

SERIALIZATION_PACKAGE = "deeplab_trainer"
